"""meshscale plugin: policy."""
