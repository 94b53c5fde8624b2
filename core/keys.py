"""WireGuard key arithmetic (Curve25519), with no Pulumi and no randomness of its own."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


class InvalidKeyError(ValueError):
    """A value is not a WireGuard key (32 bytes, base64)."""


def _decode(key_b64: str) -> bytes:
    try:
        raw = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeyError("a WireGuard key must be base64") from None
    if len(raw) != 32:
        raise InvalidKeyError(f"a WireGuard key is 32 bytes, this one is {len(raw)}")
    return raw


def public_key(private_key_b64: str) -> str:
    """The public key for a private key, as `wg pubkey` computes it.

    Any 32 bytes are a valid private key: X25519 clamps them, exactly as WireGuard does.
    """
    private = X25519PrivateKey.from_private_bytes(_decode(private_key_b64))
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def is_key(value: str) -> bool:
    try:
        _decode(value)
    except InvalidKeyError:
        return False
    return True
