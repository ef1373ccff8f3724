"""One certificate from an ACME server (RFC 8555) with certbot's ``acme`` library.

Blocking (``requests`` underneath): the plugin runs :meth:`Issuer.obtain` in a worker thread. The
challenge answers are published into the main listener's tables (``MainTls.http01`` /
``MainTls.alpn01``) for the duration of the order and withdrawn afterwards, whatever happens.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.b64 import b64encode
from josepy.jwk import JWKRSA

from meshscale import __version__
from meshscale.tls import MainTls, certs

log = logging.getLogger(__name__)

ACCOUNT_KEY = "account.key"
#: RFC 8737 id-pe-acmeIdentifier: the certificate carries SHA-256 of the key authorization.
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
ORDER_DEADLINE = datetime.timedelta(seconds=90)
CHALLENGE_TYPES = {"HTTP-01": "http-01", "TLS-ALPN-01": "tls-alpn-01"}


class AcmeFailure(Exception):
    """An order failed; the message is one line for the log."""


@dataclass(frozen=True)
class Issued:
    chain_pem: bytes
    key_pem: bytes


def write_private(path: Path, data: bytes) -> None:
    """Atomically, mode 0600 from the start (keys and certificates in the cache directory)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def alpn_challenge_pem(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737's self-signed certificate: SAN ``name``, critical acmeIdentifier extension
    holding the DER OCTET STRING of SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode()).digest()
    ext = x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest)
    return certs.self_signed_pem(name, days=1, critical=[ext])


class Issuer:
    def __init__(self, *, directory: str, email: str, hostname: str, challenge: str,
                 cache: Path, ca_file: str, tls: MainTls) -> None:
        self.directory = directory
        self.email = email
        self.hostname = hostname
        self.challenge = CHALLENGE_TYPES[challenge]
        self.cache = cache
        self.verify: str | bool = ca_file or True
        self.tls = tls

    # -- the account -----------------------------------------------------------------------------

    def account_key(self) -> JWKRSA:
        path = self.cache / ACCOUNT_KEY
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise AcmeFailure(f"{path} is not an RSA key; remove it to make a new account")
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            write_private(path, _pem(key))
            log.info("acme: made an account key in %s", path)
        return JWKRSA(key=key)

    def _client(self, key: JWKRSA) -> client.ClientV2:
        # acme hands verify_ssl to requests' ``verify``, which also takes a CA file (typed bool).
        net = client.ClientNetwork(key, user_agent=f"meshscale/{__version__}",
                                   verify_ssl=cast(bool, self.verify))
        acme = client.ClientV2(client.ClientV2.get_directory(self.directory, net), net=net)
        reg = messages.NewRegistration.from_data(email=self.email or None,
                                                 terms_of_service_agreed=True)
        try:
            acme.new_account(reg)
            log.info("acme: registered an account at %s", self.directory)
        except errors.ConflictError as exc:  # this key has an account already: use it
            acme.query_registration(messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()))
        return acme

    # -- one order ---------------------------------------------------------------------------

    def obtain(self) -> Issued:
        """A new key and certificate for the hostname; AcmeFailure (one line) if not."""
        try:
            return self._obtain()
        except AcmeFailure:
            raise
        except Exception as exc:
            raise AcmeFailure(reason(exc)) from exc

    def _obtain(self) -> Issued:
        key = self.account_key()
        acme = self._client(key)
        cert_key = ec.generate_private_key(ec.SECP256R1())
        csr = crypto_util.make_csr(_pem(cert_key), [self.hostname])
        order = acme.new_order(csr)
        withdraw: list[Callable[[], None]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                challb = self._pick(authz)
                withdraw.append(self._publish(challb, key))
                acme.answer_challenge(challb, challenges.HTTP01Response())  # body {} for all
            deadline = datetime.datetime.now() + ORDER_DEADLINE
            final = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for undo in withdraw:
                undo()
        if not final.fullchain_pem:
            raise AcmeFailure("the order finished without a certificate")
        return Issued(final.fullchain_pem.encode(), _pem(cert_key))

    def _pick(self, authz: messages.AuthorizationResource) -> messages.ChallengeBody:
        offered = []
        for challb in authz.body.challenges:
            kind = _type_of(challb)
            offered.append(kind)
            if kind == self.challenge:
                return challb
        raise AcmeFailure(f"the ACME server offers no {self.challenge} challenge for "
                          f"{authz.body.identifier.value} (offered: {', '.join(offered)})")

    def _publish(self, challb: messages.ChallengeBody,
                 key: JWKRSA) -> Callable[[], None]:
        """Put the answer where the validator will look; returns how to take it back."""
        if self.challenge == "http-01":
            assert isinstance(challb.chall, challenges.HTTP01)
            path = challb.chall.path
            http01 = self.tls.http01
            http01[path] = challb.chall.validation(key).encode()

            def withdraw_http01() -> None:
                http01.pop(path, None)

            return withdraw_http01
        # acme has no TLS-ALPN-01 class: the challenge comes as UnrecognizedChallenge.
        assert isinstance(challb.chall, challenges.UnrecognizedChallenge)
        token = str(challb.chall.jobj["token"])
        thumbprint = b64encode(key.thumbprint()).decode()
        chain, pkey = alpn_challenge_pem(self.hostname, f"{token}.{thumbprint}")
        name = self.hostname.lower()
        alpn01 = self.tls.alpn01
        alpn01[name] = certs.server_context(chain, pkey, ("acme-tls/1",))

        def withdraw_alpn01() -> None:
            alpn01.pop(name, None)

        return withdraw_alpn01


def _type_of(challb: messages.ChallengeBody) -> str:
    chall = challb.chall
    if isinstance(chall, challenges.UnrecognizedChallenge):
        return str(chall.jobj.get("type", "?"))
    return str(chall.typ)


def reason(exc: BaseException) -> str:
    """One line for why an order failed: the ACME problem, or the network error in short."""
    if isinstance(exc, messages.Error):
        return f"{exc.typ.rsplit(':', 1)[-1]}: {exc.detail or exc.title or 'no detail'}"
    if isinstance(exc, errors.ValidationError):
        problems = [reason(ch.error) for a in exc.failed_authzrs for ch in a.body.challenges
                    if ch.error is not None]
        return "validation failed: " + ("; ".join(problems) or "no detail")
    if isinstance(exc, errors.TimeoutError):
        return "the ACME server did not finish the order in time"
    if isinstance(exc, requests.exceptions.SSLError):
        return ("the ACME server's TLS certificate is not trusted (set acme.ca_file for a "
                "private ACME CA)")
    if isinstance(exc, requests.exceptions.ConnectionError):
        found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        return f"cannot reach the ACME server ({found.group(1) if found else 'no connection'})"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"HTTP error talking to the ACME server: {type(exc).__name__}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
