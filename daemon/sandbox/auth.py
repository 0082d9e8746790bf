"""Authentication for the sandbox: signed-JWT client assertions and bearer tokens.

Mirrors Redox's OAuth 2.0 ``client_credentials`` flow with a
``private_key_jwt`` client assertion (RFC 7523): the assertion is an RS384 JWT
whose header ``kid`` names a registered public key and whose claims are
``iss == sub == client_id``, ``aud`` = the token endpoint URL, ``exp``,
``iat`` (at most five minutes apart) and a never-reused ``jti``.

Failure descriptions name the check that failed and never echo the assertion,
its claims or any key material.
"""

from __future__ import annotations

from collections.abc import Collection

import jwt
from starlette.requests import Request

from daemon.sandbox.state import REDOX_TOKENS, SandboxState, TokenKind

__all__ = [
    "ASSERTION_TYPE",
    "InvalidAssertionError",
    "bearer_owner",
    "verify_client_assertion",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHM = "RS384"
MAX_LIFETIME_SECONDS = 300 + 5  # Redox allows 5 minutes; 5 s of slack for clock skew
LEEWAY_SECONDS = 5
REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "jti"]


class InvalidAssertionError(Exception):
    """A client assertion was refused. ``description`` is safe to send back."""

    def __init__(self, description: str) -> None:
        self.description = description
        super().__init__(description)


def verify_client_assertion(state: SandboxState, assertion: str, audience: str) -> str:
    """Check a client assertion; returns the authenticated client ID.

    ``audience`` is the full URL of the token endpoint the assertion was posted
    to. Raises :class:`InvalidAssertionError` naming the first failed check.
    """
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise InvalidAssertionError("client_assertion is not a well-formed JWT") from None
    if header.get("alg") != ALGORITHM:
        raise InvalidAssertionError(f"client_assertion must be signed with {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidAssertionError("client_assertion header has no kid")
    client = state.client_for_kid(kid)
    if client is None:
        raise InvalidAssertionError("kid does not name a registered key")
    client_id, public_key = client

    try:
        claims = jwt.decode(
            assertion,
            public_key,
            algorithms=[ALGORITHM],
            audience=audience,
            leeway=LEEWAY_SECONDS,
            options={"require": REQUIRED_CLAIMS, "verify_signature": True},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidAssertionError(f"claim {exc.claim} is required") from None
    except jwt.InvalidSignatureError:
        raise InvalidAssertionError(
            "signature does not verify with the key registered for kid"
        ) from None
    except jwt.ExpiredSignatureError:
        raise InvalidAssertionError("client_assertion has expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidAssertionError("client_assertion iat or nbf is in the future") from None
    except jwt.InvalidAudienceError:
        raise InvalidAssertionError("aud must be the token endpoint URL") from None
    except jwt.InvalidTokenError:
        raise InvalidAssertionError("client_assertion is invalid") from None

    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise InvalidAssertionError("iss and sub must both be the client ID registered for kid")
    exp, iat = claims["exp"], claims["iat"]
    if exp - iat > MAX_LIFETIME_SECONDS:
        raise InvalidAssertionError("exp must be at most 5 minutes after iat")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise InvalidAssertionError("jti must be a non-empty string")
    if not state.consume_jti(f"{client_id}\x00{jti}", float(exp)):
        raise InvalidAssertionError("jti has already been used")
    return client_id


def bearer_owner(
    state: SandboxState, request: Request, kinds: Collection[TokenKind] = REDOX_TOKENS
) -> str | None:
    """The owner of the request's ``Authorization: Bearer`` token, if issued for
    one of ``kinds`` and unexpired."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return state.token_owner(token, kinds)
