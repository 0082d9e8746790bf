"""Key helpers for the sandbox's signed-JWT authentication (demo and tests).

A Redox OAuth client signs its client assertions with an RSA private key and
registers the public half (as a JWK, here as a PEM) under a key ID.
"""

from __future__ import annotations

import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["generate_keypair", "make_client_assertion"]


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh RSA-2048 key pair: (unencrypted PKCS#8 private PEM, SubjectPublicKeyInfo PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return private_pem, public_pem


def make_client_assertion(
    private_pem: bytes,
    *,
    client_id: str,
    key_id: str,
    audience: str,
    lifetime_seconds: int = 300,
) -> str:
    """A Redox-style client assertion: RS384 JWT with ``kid``, ``iss == sub == client_id``,
    ``aud`` (the token endpoint URL), ``iat``, ``exp`` and a random ``jti``."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, private_pem, algorithm="RS384", headers={"kid": key_id})
