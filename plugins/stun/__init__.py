"""meshscale plugin: stun."""
