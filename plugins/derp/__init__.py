"""meshscale plugin: derp."""
