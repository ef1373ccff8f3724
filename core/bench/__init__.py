"""The load generator behind ``meshscale bench``: simulated nodes speaking the real protocol."""
