"""What every ``chartdrop`` subcommand shares: exit codes, loading the config,
opening the queue read-only, and showing times (local ISO, never epoch)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from daemon.config import Settings, config_path, load_settings
from daemon.errors import ConfigError

EXIT_ERROR = 2
EXIT_INVALID = 1


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chartdrop")
    except PackageNotFoundError:
        return "unknown"


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args.config))


def open_queue(settings: Settings) -> Any:
    from daemon.queue import Queue

    if not settings.database_path.exists():
        raise ConfigError(
            f"no database at {settings.database_path} yet: "
            "has `chartdrop run` started with this config?"
        )
    return Queue.open_readonly(settings.database_path)


def check_readable(path: Path) -> None:
    """status reads only a few pages: damage elsewhere must not look like a normal
    queue. ``PRAGMA quick_check`` on a read-only connection (safe beside the daemon);
    sqlite3.DatabaseError, reported by :func:`daemon.cli.main` as damaged or
    unreadable (exit 2)."""
    import sqlite3

    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    if rows != [("ok",)]:
        raise sqlite3.DatabaseError(f"quick_check found {len(rows)} problem(s)")


def ts(value: float | None) -> str:
    return (
        "-"
        if value is None
        else datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
    )
