"""meshscale plugin: sqlite."""
