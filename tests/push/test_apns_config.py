"""APNs settings and the provider token (no network: the signing and the reuse rules)."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.push.apns import APNS_HOSTS, ApnsConfig, ApnsConfigError, ProviderToken
from app.settings import Settings


def p8() -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


FULL = {"apns_key_id": "ABC123DEFG", "apns_team_id": "TEAM123456", "apns_bundle_id": "io.x.app"}


def test_no_apns_settings_means_pushes_are_off() -> None:
    assert ApnsConfig.from_settings(Settings()) is None


def test_a_partial_configuration_names_what_is_missing() -> None:
    with pytest.raises(ApnsConfigError, match="SEENN_APNS_KEY, SEENN_APNS_BUNDLE_ID"):
        ApnsConfig.from_settings(Settings(apns_key_id="K", apns_team_id="T"))


def test_the_key_is_read_from_a_path_or_given_as_pem(tmp_path: Path) -> None:
    private, _ = p8()
    path = tmp_path / "AuthKey_ABC123DEFG.p8"
    path.write_text(private)
    from_path = ApnsConfig.from_settings(Settings(apns_key=str(path), **FULL))
    inline = ApnsConfig.from_settings(
        Settings(apns_key=private, apns_environment="sandbox", **FULL)
    )
    assert from_path is not None and inline is not None
    assert from_path.key_pem == inline.key_pem == private
    assert from_path.url == APNS_HOSTS["production"] == "https://api.push.apple.com"
    assert inline.url == "https://api.sandbox.push.apple.com"


@pytest.mark.parametrize("key", ["/nonexistent/AuthKey.p8", "-----BEGIN PRIVATE KEY-----\nno"])
def test_an_unusable_key_is_refused_at_start(key: str) -> None:
    with pytest.raises(ApnsConfigError, match="SEENN_APNS_KEY"):
        ApnsConfig.from_settings(Settings(apns_key=key, **FULL))


def test_the_provider_token_is_es256_and_reused_for_50_minutes() -> None:
    private, public = p8()
    config = ApnsConfig.from_settings(Settings(apns_key=private, **FULL))
    assert config is not None
    now = [1_700_000_000.0]
    tokens = ProviderToken(config, clock=lambda: now[0])
    first = tokens.current()
    assert jwt.get_unverified_header(first) == {"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}
    claims = jwt.decode(first, public, algorithms=["ES256"])
    assert claims == {"iss": "TEAM123456", "iat": 1_700_000_000}
    now[0] += 49 * 60
    assert tokens.current() == first
    now[0] += 60
    second = tokens.current()
    assert second != first
    assert jwt.decode(second, public, algorithms=["ES256"])["iat"] == 1_700_000_000 + 50 * 60
    tokens.expire()  # APNs said ExpiredProviderToken
    assert tokens.current() != second
