"""Who is calling, and what they may do: bearer JWTs (HS256, RS256, ES256) or API keys.

A token names a principal (`sub`), the tenants it may use (`tenants`, `"*"` for all) and
its scopes (`scopes`: publish, consume, admin). `admin` on `"*"` is the platform-wide
admin: it alone may register clusters with each other.
"""

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from broker_gateway.errors import Forbidden, Unauthenticated
from broker_gateway.settings import Settings

Scope = Literal["publish", "consume", "admin"]
SCOPES: Final = ("publish", "consume", "admin")
ALL_TENANTS: Final = "*"
_PEM_BLOCK: Final = "-----END PUBLIC KEY-----"
# How many verified tokens to remember (least recently used go first).
_VERIFIED_TOKENS: Final = 10_000
# A stream token's audience: no other route accepts it, whatever its key.
STREAM_AUDIENCE: Final = "broker-gateway/stream"


@dataclass(frozen=True)
class Principal:
    name: str
    tenants: frozenset[str]
    scopes: frozenset[str]

    def may(self, scope: Scope, tenant: str) -> bool:
        return scope in self.scopes and (ALL_TENANTS in self.tenants or tenant in self.tenants)

    def require(self, scope: Scope, tenants: Iterable[str]) -> None:
        """Raises: Forbidden unless the principal has `scope` on every one of `tenants`."""
        refused = sorted(t for t in set(tenants) if not self.may(scope, t))
        if refused:
            raise Forbidden(f"{self.name} has no {scope} scope on tenant {', '.join(refused)}")

    def require_scope(self, scope: Scope) -> None:
        """Raises: Forbidden unless the principal has `scope` on some tenant."""
        if scope not in self.scopes or not self.tenants:
            raise Forbidden(f"{self.name} has no {scope} scope")

    @property
    def platform_admin(self) -> bool:
        return "admin" in self.scopes and ALL_TENANTS in self.tenants


ANONYMOUS: Final = Principal("anonymous", frozenset({ALL_TENANTS}), frozenset(SCOPES))


class Authenticator:
    """Checks credentials against the configured keys; built once per app."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self._audience = settings.auth_audience
        self._issuer = settings.auth_issuer
        self._leeway_s = settings.auth_leeway_s
        # Each accepted algorithm with the keys that verify it; nothing else is accepted,
        # so `none` and any algorithm without a configured key are refused.
        self._keys: dict[str, list[Any]] = {}
        if settings.auth_hs256_secret is not None:
            self._keys["HS256"] = [settings.auth_hs256_secret.get_secret_value().encode()]
        if settings.auth_public_keys_file is not None:
            for key in _public_keys(settings.auth_public_keys_file):
                algorithm = "RS256" if isinstance(key, rsa.RSAPublicKey) else "ES256"
                self._keys.setdefault(algorithm, []).append(key)
        # Verified tokens and when they expire: a client sends the same token on every
        # request, and checking a signature costs more than the rest of a small publish.
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._api_keys: dict[str, Principal] = {}
        if settings.auth_api_keys_file is not None:
            self._api_keys = _api_keys(settings.auth_api_keys_file)
        if self.enabled and not self._keys and not self._api_keys:
            raise ValueError(
                "authentication is on but no key is configured: set GATEWAY_AUTH_HS256_SECRET, "
                "GATEWAY_AUTH_PUBLIC_KEYS_FILE or GATEWAY_AUTH_API_KEYS_FILE, or turn it off "
                "explicitly with GATEWAY_AUTH_ENABLED=false (local development only)"
            )

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an `Authorization` header.

        Raises: Unauthenticated, saying why (never echoing the credential).
        """
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise Unauthenticated("an Authorization: Bearer token is required")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("use Authorization: Bearer <token>")
        if credential.count(".") == 2:
            return self._from_jwt(credential)
        principal = self._api_keys.get(hashlib.sha256(credential.encode()).hexdigest())
        if principal is None:
            raise Unauthenticated("the token is neither a valid JWT nor a known API key")
        return principal

    def _from_jwt(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires_at = cached
            if time.time() <= expires_at + self._leeway_s:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        principal, expires_at = self._verify(token)
        self._verified[token] = (principal, expires_at)
        if len(self._verified) > _VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        """The principal and the expiry of a token whose signature and claims hold.

        Raises: Unauthenticated.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("malformed token") from exc
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._keys:
            raise Unauthenticated(f"tokens signed with {algorithm!r} are not accepted")
        keys = self._keys[algorithm]
        failure: jwt.InvalidTokenError | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    leeway=self._leeway_s,
                    options={"require": ["exp", "sub", "aud"]},
                )
            except jwt.InvalidSignatureError as exc:
                failure = exc
                continue  # another configured key may verify it
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(f"invalid token: {_reason(exc)}") from exc
            return _principal(claims), float(claims["exp"])
        raise Unauthenticated(f"invalid token: {_reason(failure)}")


def _reason(exc: jwt.InvalidTokenError | None) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not valid yet (nbf)"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing claim {exc.claim!r}"
    return "malformed"


def _principal(claims: dict[str, Any]) -> Principal:
    """Raises: Unauthenticated when the claims do not say who and what."""
    scopes = claims.get("scopes", claims.get("scope", []))
    if isinstance(scopes, str):  # OAuth's space-separated `scope`
        scopes = scopes.split()
    name = claims.get("sub")
    try:
        if not isinstance(name, str):
            raise TypeError("sub is not a string")
        tenants = _strings(claims.get("tenants", claims.get("tenant", [])))
        granted = _strings(scopes)
    except TypeError as exc:
        raise Unauthenticated("invalid token: sub, tenants and scopes must be names") from exc
    return Principal(name, tenants, frozenset(s for s in granted if s in SCOPES))


def _public_keys(path: Path) -> list[rsa.RSAPublicKey | ec.EllipticCurvePublicKey]:
    """Raises: ValueError for a key that is neither RSA nor EC P-256."""
    keys: list[rsa.RSAPublicKey | ec.EllipticCurvePublicKey] = []
    text = path.read_text()
    for block in text.split(_PEM_BLOCK):
        if not block.strip():
            continue
        key = load_pem_public_key((block + _PEM_BLOCK).strip().encode())
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            keys.append(key)
        elif isinstance(key, rsa.RSAPublicKey):
            keys.append(key)
        else:
            raise ValueError(f"{path}: only RSA (RS256) and EC P-256 (ES256) keys are supported")
    return keys


def _api_keys(path: Path) -> dict[str, Principal]:
    """`[{sha256: <hex of the key>, principal, tenants, scopes}]`, as YAML or JSON.

    Raises: ValueError for a malformed file.
    """
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: a list of {{sha256, principal, tenants, scopes}}")
    keys = {}
    for entry in entries:
        try:
            digest = str(entry["sha256"]).lower()
            tenants = _strings(entry.get("tenants", []))
            scopes = _strings(entry.get("scopes", []))
            keys[digest] = Principal(
                str(entry["principal"]), tenants, frozenset(s for s in scopes if s in SCOPES)
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"{path}: each entry needs sha256 and principal; tenants and scopes are "
                "lists of names"
            ) from exc
    return keys


def _strings(value: Any) -> frozenset[str]:
    """A name or a list of names, as JWT claims may give them.

    Raises: TypeError for anything else.
    """
    if isinstance(value, str):
        return frozenset([value])
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise TypeError("not a list of names")


def mint(
    secret_or_key: str | bytes,
    *,
    principal: str,
    tenants: Iterable[str],
    scopes: Iterable[str],
    expires_in_s: int,
    audience: str,
    algorithm: str = "HS256",
    issuer: str | None = None,
) -> str:
    """A token the gateway accepts (`broker-gateway token`)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": principal,
        "tenants": sorted(set(tenants)),
        "scopes": sorted(set(scopes)),
        "aud": audience,
        "iat": now,
        "nbf": now,
        "exp": now + expires_in_s,
    }
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret_or_key, algorithm=algorithm)


class StreamTokens:
    """Short-lived tokens for following one topic live, made for browsers: an
    `EventSource` cannot send an Authorization header, so the token rides in the stream's
    URL (`?access_token=`), and the stream route alone accepts it there.

    A stream token names the principal that asked for it, one topic and nothing else: it
    grants `consume` on that topic's live stream, for `ttl_s` (an EventSource reconnects
    with the same URL, so it is reusable until then; a stream already open outlives it).
    It is signed with a key of its own, derived from the receipt secret (every replica
    accepts it) and never accepted as a Bearer token: a token leaked from a URL opens that
    one stream for minutes, and nothing else.
    """

    def __init__(self, secret: bytes | None, ttl_s: int) -> None:
        # Unset, each process makes its own, as receipts do (`serve` shares one with its
        # workers).
        secret = secret if secret is not None else os.urandom(32)
        self._key = hmac.new(secret, b"broker-gateway stream tokens", hashlib.sha256).digest()
        self.ttl_s = ttl_s

    def mint(self, principal: Principal, tenant: str, topic: str) -> tuple[str, int]:
        """A token for `topic` (its `tenant/namespace/topic` path) and its expiry (epoch s)."""
        now = int(time.time())
        claims = {
            "sub": principal.name,
            "tenant": tenant,
            "topic": topic,
            "aud": STREAM_AUDIENCE,
            "iat": now,
            "exp": now + self.ttl_s,
        }
        return jwt.encode(claims, self._key, algorithm="HS256"), now + self.ttl_s

    def verify(self, token: str, topic: str) -> Principal:
        """The principal a token was made for, allowed to consume `topic` alone.

        Raises: Unauthenticated (bad, expired or foreign token); Forbidden (another topic).
        """
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=STREAM_AUDIENCE,
                options={"require": ["exp", "sub", "aud", "topic", "tenant"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid stream token: {_reason(exc)}") from exc
        if claims["topic"] != topic:
            raise Forbidden(f"this stream token is for topic {claims['topic']}, not {topic}")
        return Principal(str(claims["sub"]), frozenset({claims["tenant"]}), frozenset({"consume"}))
