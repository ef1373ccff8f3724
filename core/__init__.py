"""meshscale: a self-hosted Tailscale control server.

Importing this package does nothing but define the plugin marker and the version.
"""

import pluggy

__version__ = "0.1.0"

PROJECT = "meshscale"

#: Decorator for plugin hook implementations: ``@hookimpl def meshscale_...``.
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = ["PROJECT", "__version__", "hookimpl"]
