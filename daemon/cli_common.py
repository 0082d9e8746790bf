"""What every ``chartdrop`` subcommand shares: exit codes, loading the config,
opening the queue read-only, and showing times (local ISO, never epoch)."""

from __future__ import annotations

import argparse
from datetime import datetime
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


def ts(value: float | None) -> str:
    return (
        "-"
        if value is None
        else datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
    )
