"""Authenticated encryption of secrets stored in Postgres.

Provider keys and webhook signing secrets are stored as tokens of the form
`v1:` + base64url(nonce + ciphertext). The ciphertext is AES-256-GCM under a
key derived from the server secret (`GATEWAYZ_SECRET`) with HKDF-SHA256, so
the database alone does not reveal them, and a changed or truncated token
fails to decrypt instead of returning wrong plaintext.

To rotate the server secret, keep the previous secrets in `old_secrets`:
`decrypt` tries the current secret first and then each older one, and
`rotate` re-encrypts a token under the current secret.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "v1"
# The same minimum length that Settings.from_env enforces on GATEWAYZ_SECRET.
MIN_SECRET_BYTES = 32
NONCE_BYTES = 12
_HKDF_SALT = b"gatewayz.secret_box"
_HKDF_INFO = b"gatewayz secret_box v1 aes-256-gcm"
# Bound into every ciphertext as associated data, so a token cannot be
# relabelled with another version prefix.
_ASSOCIATED_DATA = VERSION.encode()


class SecretBoxError(ValueError):
    """A token is malformed, or no configured secret decrypts it."""


def _derive_key(settings_secret: bytes) -> bytes:
    if not isinstance(settings_secret, bytes):
        raise TypeError("the server secret must be bytes")
    if len(settings_secret) < MIN_SECRET_BYTES:
        raise SecretBoxError(f"the server secret must be at least {MIN_SECRET_BYTES} bytes")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return hkdf.derive(settings_secret)


def encrypt(settings_secret: bytes, plaintext: str) -> str:
    """Encrypt `plaintext` under a key derived from the server secret."""
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(_derive_key(settings_secret)).encrypt(
        nonce, plaintext.encode(), _ASSOCIATED_DATA
    )
    encoded = base64.urlsafe_b64encode(nonce + ciphertext).decode("ascii")
    return f"{VERSION}:{encoded}"


def _split_token(token: str) -> tuple[bytes, bytes]:
    version, separator, encoded = token.partition(":")
    if not separator:
        raise SecretBoxError("invalid encrypted token: missing the version prefix")
    if version != VERSION:
        raise SecretBoxError(f"unsupported encrypted token version {version!r}, expected {VERSION}")
    try:
        raw = base64.urlsafe_b64decode(encoded.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SecretBoxError("invalid encrypted token: not base64url") from exc
    # AES-GCM appends a 16-byte tag, so even an empty secret is this long.
    if len(raw) < NONCE_BYTES + 16:
        raise SecretBoxError("invalid encrypted token: too short")
    return raw[:NONCE_BYTES], raw[NONCE_BYTES:]


def decrypt(settings_secret: bytes, token: str, old_secrets: Sequence[bytes] = ()) -> str:
    """Decrypt a token made by `encrypt` with the current or an older secret.

    Raises SecretBoxError when the token is malformed, was changed, or was
    encrypted under none of the given secrets.
    """
    nonce, ciphertext = _split_token(token)
    for secret in (settings_secret, *old_secrets):
        try:
            plaintext = AESGCM(_derive_key(secret)).decrypt(nonce, ciphertext, _ASSOCIATED_DATA)
        except InvalidTag:
            continue
        return plaintext.decode()
    raise SecretBoxError(
        "the encrypted token failed authentication because it was changed or was "
        "encrypted under a secret that is not configured; pass the previous server "
        "secrets as old_secrets"
    )


def rotate(settings_secret: bytes, token: str, old_secrets: Sequence[bytes]) -> str:
    """Re-encrypt a token under the current secret, with a fresh nonce.

    The token may be under the current secret or any of `old_secrets`.
    """
    return encrypt(settings_secret, decrypt(settings_secret, token, old_secrets))
