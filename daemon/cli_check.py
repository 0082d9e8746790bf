"""``chartdrop check``: the config, the folders, the secret files and (with
``--online``) authentication, every problem at once. It builds the HTTP
clients, so it imports what ``run`` does; the other commands do not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.cli_common import settings_from
from daemon.config import Settings
from daemon.errors import ConfigError


def cmd_check(args: argparse.Namespace) -> int:
    from daemon.inbox_lock import inbox_conflict
    from daemon.service import Service, folder_problems

    settings = settings_from(args)
    problems = folder_problems(settings)
    for dest in settings.destination:
        conflict = inbox_conflict(dest.name, dest.inbox, settings.state_dir)
        if conflict:
            problems.append(conflict)
    for key_name, key in secret_files(settings):
        if key is None or not key.is_file():
            problems.append(f"{key_name} ({key}) does not exist")
        else:
            if key.stat().st_mode & 0o077:
                print(
                    f"warning: {key} is readable by group or others; chmod 600 it", file=sys.stderr
                )
            if key_name == "redox.private_key_file":
                unusable = private_key_problem(key)
                if unusable:
                    problems.append(f"{key_name} ({key}) {unusable}")
    try:
        sender = Service.make_sender(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
        sender = None
    try:
        if problems:
            raise ConfigError(problems)
        if args.online and sender is not None:
            models = {d.model for d in settings.destination}
            if models - {"FHIR"}:
                sender.redox.check_auth()
                print("online: authenticated with Redox")
            if "FHIR" in models:
                sender.fhir.check_auth()
                print("online: authenticated with the FHIR token endpoint")
    finally:  # its connections (``--online``): closed, not left to the garbage collector
        for client in sender.http_clients() if sender is not None else []:
            client.close()
    print(f"ok: {len(settings.destination)} destination(s), state_dir {settings.state_dir}")
    return 0


def private_key_problem(path: Path) -> str | None:
    """Why ``path`` cannot sign Redox's RS384 client assertions, or None. Offline:
    the file must be an unencrypted PEM RSA private key of at least 2048 bits."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    except TypeError:
        return "is encrypted with a passphrase; chartdrop needs it unencrypted (chmod 600)"
    except (ValueError, UnsupportedAlgorithm):
        return "is not a PEM private key (-----BEGIN PRIVATE KEY-----)"
    if not isinstance(key, RSAPrivateKey):
        return "is not an RSA private key (Redox signs with RS384)"
    if key.key_size < 2048:
        return f"is an RSA key of {key.key_size} bits; Redox needs at least 2048"
    return None


def secret_files(settings: Settings) -> list[tuple[str, Path | None]]:
    """The secret files the configured destinations need, with their config keys."""
    models = {d.model for d in settings.destination}
    out: list[tuple[str, Path | None]] = []
    if models - {"FHIR"}:
        if settings.redox.auth == "legacy":
            out.append(("redox.secret_file", settings.redox.secret_file))
        else:
            out.append(("redox.private_key_file", settings.redox.private_key_file))
    if "FHIR" in models:
        out.append(("fhir.client_secret_file", settings.fhir.client_secret_file))
    return out
