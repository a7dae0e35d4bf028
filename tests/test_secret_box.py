from __future__ import annotations

import base64

import pytest

from gateway_core import secret_box
from gateway_core.secret_box import SecretBoxError

CURRENT = b"current-secret-" + b"c" * 32
OLD = b"old-secret-" + b"o" * 32
OTHER = b"other-secret-" + b"z" * 32


def test_round_trip() -> None:
    token = secret_box.encrypt(CURRENT, "sk-provider-key ✓")
    assert token.startswith("v1:")
    assert "sk-provider-key" not in token
    assert secret_box.decrypt(CURRENT, token) == "sk-provider-key ✓"


def test_round_trip_empty_plaintext() -> None:
    assert secret_box.decrypt(CURRENT, secret_box.encrypt(CURRENT, "")) == ""


def test_fresh_nonce_per_encryption() -> None:
    first = secret_box.encrypt(CURRENT, "same")
    second = secret_box.encrypt(CURRENT, "same")
    assert first != second


def _flip_byte(token: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token[3:]))
    raw[index] ^= 0x01
    return "v1:" + base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("index", [0, 11, 12, -1])
def test_tampered_token_rejected(index: int) -> None:
    token = secret_box.encrypt(CURRENT, "webhook-secret")
    with pytest.raises(SecretBoxError, match="failed authentication"):
        secret_box.decrypt(CURRENT, _flip_byte(token, index))


def test_truncated_token_rejected() -> None:
    token = secret_box.encrypt(CURRENT, "webhook-secret")
    raw = base64.urlsafe_b64decode(token[3:])
    truncated = "v1:" + base64.urlsafe_b64encode(raw[:-1]).decode()
    with pytest.raises(SecretBoxError):
        secret_box.decrypt(CURRENT, truncated)


@pytest.mark.parametrize(
    "token",
    ["", "no-prefix", "v2:AAAA", "v1:not base64!", "v1:" + base64.urlsafe_b64encode(b"x").decode()],
)
def test_malformed_token_rejected(token: str) -> None:
    with pytest.raises(SecretBoxError):
        secret_box.decrypt(CURRENT, token)


def test_wrong_key_rejected() -> None:
    token = secret_box.encrypt(CURRENT, "webhook-secret")
    with pytest.raises(SecretBoxError, match="failed authentication"):
        secret_box.decrypt(OTHER, token)


def test_short_secret_rejected() -> None:
    with pytest.raises(SecretBoxError, match="at least 32 bytes"):
        secret_box.encrypt(b"short", "x")


def test_error_does_not_echo_token() -> None:
    token = secret_box.encrypt(CURRENT, "webhook-secret")
    with pytest.raises(SecretBoxError) as caught:
        secret_box.decrypt(OTHER, token)
    assert token[3:] not in str(caught.value)


def test_decrypt_with_old_secret() -> None:
    token = secret_box.encrypt(OLD, "rotated")
    with pytest.raises(SecretBoxError):
        secret_box.decrypt(CURRENT, token)
    assert secret_box.decrypt(CURRENT, token, old_secrets=[OTHER, OLD]) == "rotated"


def test_rotate_moves_token_to_current_secret() -> None:
    old_token = secret_box.encrypt(OLD, "rotated")
    new_token = secret_box.rotate(CURRENT, old_token, old_secrets=[OLD])
    assert new_token != old_token
    assert secret_box.decrypt(CURRENT, new_token) == "rotated"
    with pytest.raises(SecretBoxError):
        secret_box.decrypt(OLD, new_token)


def test_rotate_accepts_current_token() -> None:
    token = secret_box.encrypt(CURRENT, "already current")
    rotated = secret_box.rotate(CURRENT, token, old_secrets=[OLD])
    assert secret_box.decrypt(CURRENT, rotated) == "already current"


def test_rotate_unknown_secret_fails() -> None:
    token = secret_box.encrypt(OTHER, "lost")
    with pytest.raises(SecretBoxError):
        secret_box.rotate(CURRENT, token, old_secrets=[OLD])
