"""Secrets out of anything shown or logged: URLs lose credentials, token values and DoH paths.

A URL can carry a secret in three places: ``user:password@``, the query (``?token=...``, as DERP
map URLs often do), and, for DNS-over-HTTPS resolvers such as NextDNS or Control D, the path
(``https://dns.nextdns.io/<profile>``). Every page or log line that shows a configured URL goes
through ``url``.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "<redacted>"


def url(text: str, secret_path: bool = False) -> str:
    """``text`` with credentials and query values replaced; the path too if ``secret_path``.

    Text that is not a URL comes back unchanged."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return REDACTED  # unparseable, so we cannot tell what in it is secret
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = f"{REDACTED}@{parts.hostname or ''}" + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if v else v) for k, v in pairs], safe="<>")
    path = parts.path
    if secret_path and path not in ("", "/", "/dns-query"):
        path = "/" + REDACTED
    return urlunsplit(parts._replace(netloc=netloc, query=query, path=path))
