import base64
import hashlib
import hmac
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr

from broker_gateway.auth import Authenticator, Principal, StreamTokens, mint
from broker_gateway.errors import Forbidden, Unauthenticated
from broker_gateway.settings import Settings

SECRET = "s" * 40
OTHER_SECRET = "o" * 40
AUDIENCE = "broker-gateway"


@pytest.fixture
def hs256() -> Authenticator:
    return Authenticator(Settings(auth_hs256_secret=SecretStr(SECRET)))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(*keys: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return "".join(
        k.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        for k in keys
    )


def _public_keys_authenticator(
    tmp_path: Path, *keys: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> Authenticator:
    path = tmp_path / "keys.pem"
    path.write_text(_pem(*keys))
    return Authenticator(Settings(auth_public_keys_file=path))


def _claims(*, without: tuple[str, ...] = (), **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "tenants": ["acme"],
        "scopes": ["publish"],
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        **overrides,
    }
    return {k: v for k, v in claims.items() if k not in without}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rejected(authenticator: Authenticator, header: str | None) -> str:
    """The reason given for refusing `header`, checked not to echo the credential."""
    with pytest.raises(Unauthenticated) as caught:
        authenticator.authenticate(header)
    detail = caught.value.detail
    assert detail
    credential = (header or "").partition(" ")[2].strip()
    if credential:
        assert credential not in detail
        for part in credential.split("."):
            assert len(part) < 8 or part not in detail
    return detail


# --- HS256 tokens -----------------------------------------------------------------------


def test_minted_hs256_token_names_its_principal_tenants_and_scopes(
    hs256: Authenticator,
) -> None:
    token = mint(
        SECRET,
        principal="alice",
        tenants=["acme", "globex"],
        scopes=["publish", "consume"],
        expires_in_s=300,
        audience=AUDIENCE,
    )
    principal = hs256.authenticate(f"Bearer {token}")
    assert principal == Principal(
        "alice", frozenset({"acme", "globex"}), frozenset({"publish", "consume"})
    )


def test_oauth_scope_string_and_single_tenant_string_are_accepted(hs256: Authenticator) -> None:
    claims = _claims(without=("tenants", "scopes"), tenant="acme", scope="publish consume")
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    principal = hs256.authenticate(f"Bearer {token}")
    assert principal.tenants == frozenset({"acme"})
    assert principal.scopes == frozenset({"publish", "consume"})


def test_unknown_scopes_in_a_token_grant_nothing(hs256: Authenticator) -> None:
    token = jwt.encode(_claims(scopes=["publish", "root", "superuser"]), SECRET, algorithm="HS256")
    assert hs256.authenticate(f"Bearer {token}").scopes == frozenset({"publish"})


def test_bearer_scheme_is_case_insensitive(hs256: Authenticator) -> None:
    token = jwt.encode(_claims(), SECRET, algorithm="HS256")
    assert hs256.authenticate(f"bearer {token}").name == "alice"


def test_expiry_and_nbf_within_the_leeway_are_tolerated(hs256: Authenticator) -> None:
    now = int(time.time())
    token = jwt.encode(_claims(exp=now - 10, nbf=now + 10), SECRET, algorithm="HS256")
    assert hs256.authenticate(f"Bearer {token}").name == "alice"


def test_issuer_is_checked_when_configured() -> None:
    authenticator = Authenticator(
        Settings(auth_hs256_secret=SecretStr(SECRET), auth_issuer="https://idp")
    )
    good = jwt.encode(_claims(iss="https://idp"), SECRET, algorithm="HS256")
    bad = jwt.encode(_claims(iss="https://evil"), SECRET, algorithm="HS256")
    assert authenticator.authenticate(f"Bearer {good}").name == "alice"
    assert "wrong issuer" in _rejected(authenticator, f"Bearer {bad}")


# --- rejections -------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, ""], ids=["absent", "empty"])
def test_missing_authorization_header_is_rejected(hs256: Authenticator, header: str | None) -> None:
    assert "Bearer" in _rejected(hs256, header)


@pytest.mark.parametrize(
    "header",
    ["Basic YWxpY2U6c2VjcmV0cGFzc3dvcmQ=", "Bearer", "Bearer   ", "Token abc.def.ghi"],
    ids=["basic", "bearer-without-token", "bearer-blank", "other-scheme"],
)
def test_non_bearer_authorization_is_rejected(hs256: Authenticator, header: str) -> None:
    assert "Bearer" in _rejected(hs256, header)


def test_alg_none_token_is_rejected(hs256: Authenticator) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(scopes=["admin"], tenants=["*"])).encode())
    detail = _rejected(hs256, f"Bearer {header}.{payload}.")
    assert "'none'" in detail and "not accepted" in detail


def test_algorithm_without_a_configured_key_is_rejected(
    hs256: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    hs512 = jwt.encode(_claims(), "k" * 64, algorithm="HS512")
    rs256 = jwt.encode(_claims(), rsa_key, algorithm="RS256")
    assert "'HS512'" in _rejected(hs256, f"Bearer {hs512}")
    assert "'RS256'" in _rejected(hs256, f"Bearer {rs256}")


@pytest.mark.parametrize(
    ("overrides", "without", "reason"),
    [
        pytest.param({"exp": int(time.time()) - 120}, (), "expired", id="expired"),
        pytest.param({"nbf": int(time.time()) + 3600}, (), "nbf", id="nbf-in-the-future"),
        pytest.param({"aud": "someone-else"}, (), "wrong audience", id="wrong-audience"),
        pytest.param({}, ("exp",), "missing claim 'exp'", id="missing-exp"),
        pytest.param({}, ("aud",), "missing claim 'aud'", id="missing-aud"),
        pytest.param({}, ("sub",), "missing claim 'sub'", id="missing-sub"),
    ],
)
def test_token_with_unacceptable_claims_is_rejected_with_the_reason(
    hs256: Authenticator, overrides: dict[str, Any], without: tuple[str, ...], reason: str
) -> None:
    token = jwt.encode(_claims(without=without, **overrides), SECRET, algorithm="HS256")
    assert reason in _rejected(hs256, f"Bearer {token}")


def test_token_signed_with_another_secret_is_rejected(hs256: Authenticator) -> None:
    token = jwt.encode(_claims(), OTHER_SECRET, algorithm="HS256")
    assert "bad signature" in _rejected(hs256, f"Bearer {token}")


def test_tampered_claims_break_the_signature(hs256: Authenticator) -> None:
    header, _, signature = jwt.encode(_claims(), SECRET, algorithm="HS256").split(".")
    forged = _b64(json.dumps(_claims(tenants=["*"], scopes=["admin"])).encode())
    assert "bad signature" in _rejected(hs256, f"Bearer {header}.{forged}.{signature}")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-token-at-all", "neither a valid JWT nor a known API key"),
        ("garbage.garbage.garbage", "malformed"),
        (_b64(b'{"alg":"HS256"}') + "." + _b64(b"not json") + ".c2ln", "invalid token"),
    ],
    ids=["opaque", "three-garbage-parts", "payload-not-json"],
)
def test_garbage_token_is_rejected(hs256: Authenticator, token: str, reason: str) -> None:
    assert reason in _rejected(hs256, f"Bearer {token}")


@pytest.mark.parametrize(
    "claims",
    [
        {"tenants": [1, 2]},
        {"tenants": {"acme": True}},
        {"tenants": [["acme"]]},
        {"tenants": None},
        {"scopes": [True]},
    ],
    ids=["tenant-ints", "tenants-object", "tenants-nested", "tenants-null", "scopes-bool"],
)
def test_token_whose_tenants_or_scopes_are_not_strings_is_rejected(
    hs256: Authenticator, claims: dict[str, Any]
) -> None:
    # The claims are built here, not at collection: the token must not expire meanwhile.
    token = jwt.encode(_claims(**claims), SECRET, algorithm="HS256")
    assert "must be names" in _rejected(hs256, f"Bearer {token}")


# --- RS256 / ES256 ----------------------------------------------------------------------


def test_rs256_and_es256_tokens_verify_against_the_public_keys_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    authenticator = _public_keys_authenticator(tmp_path, rsa_key, ec_key)
    rs256 = jwt.encode(_claims(sub="rsa-user"), rsa_key, algorithm="RS256")
    es256 = jwt.encode(_claims(sub="ec-user"), ec_key, algorithm="ES256")
    assert authenticator.authenticate(f"Bearer {rs256}").name == "rsa-user"
    assert authenticator.authenticate(f"Bearer {es256}").name == "ec-user"


def test_any_listed_rsa_key_may_verify_a_token(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    authenticator = _public_keys_authenticator(tmp_path, rsa_key, other_rsa_key)
    token = jwt.encode(_claims(), other_rsa_key, algorithm="RS256")
    assert authenticator.authenticate(f"Bearer {token}").name == "alice"


def test_claims_are_checked_after_a_later_key_verifies_the_signature(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    authenticator = _public_keys_authenticator(tmp_path, rsa_key, other_rsa_key)
    token = jwt.encode(_claims(exp=int(time.time()) - 120), other_rsa_key, algorithm="RS256")
    assert "expired" in _rejected(authenticator, f"Bearer {token}")


def test_token_signed_by_an_unlisted_rsa_key_is_rejected(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    authenticator = _public_keys_authenticator(tmp_path, rsa_key, ec_key)
    token = jwt.encode(_claims(), other_rsa_key, algorithm="RS256")
    assert "bad signature" in _rejected(authenticator, f"Bearer {token}")


def test_hs256_token_keyed_with_the_public_key_is_rejected(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The classic key-confusion attack: HMAC keyed with the (public) PEM of an RSA key.
    path = tmp_path / "keys.pem"
    path.write_text(_pem(rsa_key))
    authenticator = Authenticator(
        Settings(auth_hs256_secret=SecretStr(SECRET), auth_public_keys_file=path)
    )
    signing_input = (
        _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        + "."
        + _b64(json.dumps(_claims(tenants=["*"], scopes=["admin"])).encode())
    )
    mac = hmac.new(path.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    assert "bad signature" in _rejected(authenticator, f"Bearer {signing_input}.{_b64(mac)}")


def test_ec_key_on_another_curve_is_refused_at_startup(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(ValueError, match="P-256"):
        _public_keys_authenticator(tmp_path, rsa_key, ec.generate_private_key(ec.SECP384R1()))


# --- API keys ---------------------------------------------------------------------------

API_KEY = "gw_live_4f7c2a9e1b3d5f7a9c1e3b5d7f9a1c3e"


def _api_keys_authenticator(tmp_path: Path, text: str) -> Authenticator:
    path = tmp_path / "api-keys.yaml"
    path.write_text(text)
    return Authenticator(Settings(auth_api_keys_file=path))


def test_api_key_authenticates_as_its_principal(tmp_path: Path) -> None:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    authenticator = _api_keys_authenticator(
        tmp_path,
        f"- sha256: {digest.upper()}\n"
        "  principal: ci-bot\n"
        "  tenants: [acme]\n"
        "  scopes: [publish, consume]\n",
    )
    principal = authenticator.authenticate(f"Bearer {API_KEY}")
    assert principal == Principal("ci-bot", frozenset({"acme"}), frozenset({"publish", "consume"}))


def test_unknown_api_key_is_rejected(tmp_path: Path) -> None:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    authenticator = _api_keys_authenticator(
        tmp_path, f"- {{sha256: {digest}, principal: ci-bot, tenants: [acme], scopes: [publish]}}\n"
    )
    assert "API key" in _rejected(authenticator, f"Bearer {API_KEY}x")


@pytest.mark.parametrize(
    "text",
    [
        "sha256: abc\nprincipal: ci-bot\n",
        "- sha256: abc\n  tenants: [acme]\n",
        "- just-a-string\n",
        "- sha256: abc\n  principal: ci-bot\n  tenants: 7\n",
    ],
    ids=["mapping-not-list", "entry-without-principal", "entry-not-mapping", "tenants-not-list"],
)
def test_malformed_api_keys_file_is_refused_at_startup(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError):
        _api_keys_authenticator(tmp_path, text)


def test_api_key_tenants_given_as_one_string_are_not_split_into_letters(tmp_path: Path) -> None:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    text = f"- {{sha256: {digest}, principal: ci-bot, tenants: acme, scopes: publish}}\n"
    try:
        principal = _api_keys_authenticator(tmp_path, text).authenticate(f"Bearer {API_KEY}")
    except ValueError:
        return  # refusing the file is as good as reading a single tenant
    assert principal.tenants == frozenset({"acme"})
    assert principal.scopes == frozenset({"publish"})


# --- enabling and disabling -------------------------------------------------------------


def test_enabled_authentication_without_any_key_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="no key is configured"):
        Authenticator(Settings(auth_enabled=True))


def test_empty_api_keys_file_alone_counts_as_no_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no key is configured"):
        _api_keys_authenticator(tmp_path, "")


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer garbage.garbage.garbage"])
def test_disabled_authentication_grants_every_scope_on_every_tenant(header: str | None) -> None:
    principal = Authenticator(Settings(auth_enabled=False)).authenticate(header)
    assert principal.platform_admin
    for scope in ("publish", "consume", "admin"):
        assert principal.may(scope, "any-tenant")


# --- Principal --------------------------------------------------------------------------


def test_wildcard_tenant_covers_every_tenant() -> None:
    principal = Principal("p", frozenset({"*"}), frozenset({"publish"}))
    assert principal.may("publish", "acme") and principal.may("publish", "globex")
    principal.require("publish", ["acme", "globex"])


def test_other_tenant_is_forbidden_and_named() -> None:
    principal = Principal("alice", frozenset({"acme"}), frozenset({"publish"}))
    assert principal.may("publish", "acme")
    assert not principal.may("publish", "globex")
    with pytest.raises(Forbidden) as caught:
        principal.require("publish", ["acme", "globex", "initech"])
    assert "globex, initech" in caught.value.detail
    assert "acme" not in caught.value.detail


def test_missing_scope_is_forbidden() -> None:
    principal = Principal("alice", frozenset({"*"}), frozenset({"consume"}))
    assert not principal.may("publish", "acme")
    with pytest.raises(Forbidden, match="publish"):
        principal.require("publish", ["acme"])
    with pytest.raises(Forbidden, match="publish"):
        principal.require_scope("publish")
    principal.require_scope("consume")


def test_scope_without_any_tenant_is_forbidden() -> None:
    with pytest.raises(Forbidden):
        Principal("alice", frozenset(), frozenset({"publish"})).require_scope("publish")


@pytest.mark.parametrize(
    ("tenants", "scopes", "expected"),
    [
        ({"*"}, {"admin"}, True),
        ({"acme"}, {"admin"}, False),
        ({"*", "acme"}, {"publish", "consume"}, False),
    ],
    ids=["admin-on-wildcard", "admin-on-one-tenant", "wildcard-without-admin"],
)
def test_platform_admin_needs_admin_on_the_wildcard_tenant(
    tenants: set[str], scopes: set[str], expected: bool
) -> None:
    assert Principal("p", frozenset(tenants), frozenset(scopes)).platform_admin is expected


def test_a_remembered_token_still_expires(
    hs256: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker_gateway.auth as auth_module

    token = jwt.encode(_claims(exp=int(time.time()) + 60), SECRET, algorithm="HS256")
    assert hs256.authenticate(f"Bearer {token}").name == "alice"
    assert hs256.authenticate(f"Bearer {token}").name == "alice"  # from memory now

    class Later:
        @staticmethod
        def time() -> float:
            return time.time() + 3600

    class LaterDatetime(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> "LaterDatetime":
            return cls.fromtimestamp(Later.time(), tz)

    # An hour later, for the gateway's memory of the token and for PyJWT's check alike.
    monkeypatch.setattr(auth_module, "time", Later)
    monkeypatch.setattr(jwt.api_jwt, "datetime", LaterDatetime)
    assert "expired" in _rejected(hs256, f"Bearer {token}")


# --- stream tokens ---------------------------------------------------------------------------

ALICE = Principal("alice", frozenset({"*"}), frozenset({"publish", "consume", "admin"}))


def test_a_stream_token_grants_consume_on_its_tenant_alone() -> None:
    tokens = StreamTokens(b"receipt secret", ttl_s=300)
    made, expires = tokens.mint(ALICE, "acme", "acme/ns/orders")
    principal = tokens.verify(made, "acme/ns/orders")
    assert principal == Principal("alice", frozenset({"acme"}), frozenset({"consume"}))
    assert expires == pytest.approx(time.time() + 300, abs=2)


def test_a_stream_token_is_for_its_topic_only() -> None:
    tokens = StreamTokens(b"receipt secret", ttl_s=300)
    made, _ = tokens.mint(ALICE, "acme", "acme/ns/orders")
    with pytest.raises(Forbidden, match="acme/ns/orders"):
        tokens.verify(made, "acme/ns/payments")


def test_replicas_with_the_same_secret_accept_each_others_stream_tokens() -> None:
    made, _ = StreamTokens(b"shared", ttl_s=300).mint(ALICE, "acme", "acme/ns/orders")
    assert StreamTokens(b"shared", ttl_s=60).verify(made, "acme/ns/orders").name == "alice"
    with pytest.raises(Unauthenticated, match="bad signature"):
        StreamTokens(b"another", ttl_s=300).verify(made, "acme/ns/orders")


def test_an_expired_stream_token_is_refused() -> None:
    made, _ = StreamTokens(b"receipt secret", ttl_s=-1).mint(ALICE, "acme", "acme/ns/orders")
    with pytest.raises(Unauthenticated, match="expired"):
        StreamTokens(b"receipt secret", ttl_s=300).verify(made, "acme/ns/orders")


def test_a_stream_token_is_no_bearer_token_even_under_the_same_secret() -> None:
    secret = "one secret for everything, long enough for HS256"
    made, _ = StreamTokens(secret.encode(), ttl_s=300).mint(ALICE, "acme", "acme/ns/orders")
    auth = Authenticator(Settings(auth_hs256_secret=SecretStr(secret)))
    with pytest.raises(Unauthenticated):
        auth.authenticate(f"Bearer {made}")


def test_a_gateway_token_is_no_stream_token() -> None:
    secret = "one secret for everything, long enough for HS256"
    bearer = mint(
        secret,
        principal="alice",
        tenants=["*"],
        scopes=["consume"],
        expires_in_s=60,
        audience="broker-gateway/stream",
    )
    with pytest.raises(Unauthenticated):
        StreamTokens(secret.encode(), ttl_s=300).verify(bearer, "acme/ns/orders")
