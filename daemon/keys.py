"""``chartdrop keys new``: the key pair for Redox's signed-JWT auth.

Writes the private key (RSA 2048, PKCS#8 PEM) with mode 0600, never over an
existing file, and returns the public half as a JWK set with its ``kid`` and
``alg`` RS384: paste it into the Redox dashboard (the API key's "public key"
/ JWKS) and put the ``kid`` in ``[redox] key_id``.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from daemon.errors import ChartdropError


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_key(path: Path, kid: str | None = None) -> dict[str, Any]:
    """Write a new private key to ``path`` (0600, refused if it exists); the JWKS."""
    kid = kid or str(uuid.uuid4())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ChartdropError(f"{path} already exists; chartdrop never overwrites a key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS384",
           "n": _b64(numbers.n), "e": _b64(numbers.e)}  # fmt: skip
    return {"keys": [jwk]}


def public_pem(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def describe(jwks: dict[str, Any], path: Path) -> str:
    kid = jwks["keys"][0]["kid"]
    return "\n".join(
        [
            f"private key written to {path} (mode 0600); keep it on this server only",
            "",
            "Public key (JWKS) to paste into the Redox dashboard, for your API key:",
            json.dumps(jwks, indent=2),
            "",
            "In chartdrop.toml:",
            "  [redox]",
            '  auth = "jwt"',
            f'  key_id = "{kid}"',
            f'  private_key_file = "{path}"   # or the systemd credential name',
        ]
    )
