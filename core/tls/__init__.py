"""HTTPS on the main listener: certificates (own files or ACME), their reload, the listener
that picks a certificate per connection, and the plain-HTTP redirect port. See docs/tls.md."""

from meshscale.tls.certs import Certificate, TlsError
from meshscale.tls.manager import MainTls

__all__ = ["Certificate", "MainTls", "TlsError"]
