"""What every ``chartdrop`` subcommand shares: exit codes, loading the config,
opening the queue read-only, and showing times (local ISO, never epoch)."""

from __future__ import annotations

import argparse
import os
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError

if TYPE_CHECKING:  # the config's models import pydantic: only the commands that need it
    from daemon.config import Settings

EXIT_ERROR = 2
EXIT_INVALID = 1


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chartdrop")
    except PackageNotFoundError:
        return "unknown"


def settings_from(args: argparse.Namespace) -> Settings:
    from daemon.config import config_path, load_settings

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
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    if rows != [("ok",)]:
        raise sqlite3.DatabaseError(f"quick_check found {len(rows)} problem(s)")


class QuickCheck:
    """:func:`check_readable` in a thread. It reads every page (≈50 ms of CPU per
    100,000 jobs), and SQLite lets go of the GIL while it does, so ``status``
    starts it :meth:`early`, before importing the config's models (≈0.3 s of
    CPU), on the database the config file names; :meth:`wait` trusts that run
    only if the loaded settings name the same file, else checks that one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._error: Exception | None = None
        self._passed = False
        self._thread = threading.Thread(target=self._run, name="quick-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            check_readable(self.path)
            self._passed = True
        except (sqlite3.Error, OSError) as exc:  # raised again by wait(), in the command's thread
            self._error = exc

    @classmethod
    def early(cls, config: str | None) -> QuickCheck | None:
        """Started on ``state_dir`` as the file (or ``$CHARTDROP_STATE_DIR``) gives
        it, without pydantic; None when that is not clear or there is no database."""
        import tomllib

        default = os.environ.get("CHARTDROP_CONFIG") or "/etc/chartdrop/chartdrop.toml"
        path = Path(config or default).expanduser().absolute()
        env = [v for k, v in os.environ.items() if k.upper() == "CHARTDROP_STATE_DIR"]
        try:
            with path.open("rb") as fh:
                state = env[0] if env else tomllib.load(fh).get("state_dir", "/var/lib/chartdrop")
        except (OSError, ValueError):
            return None
        if not isinstance(state, str) or not state:
            return None
        database = (path.parent / Path(state).expanduser()).absolute() / "chartdrop.sqlite3"
        return cls(database) if database.is_file() else None

    @staticmethod
    def wait(started: QuickCheck | None, path: Path) -> None:
        """Raise what quick_check found on ``path``: the run started early if it
        was on that file, else a new one."""
        check = started if started is not None and started.path == path else QuickCheck(path)
        check._thread.join()
        if check._error is not None:
            raise check._error
        if not check._passed:  # anything else went wrong in the thread: not a pass
            raise sqlite3.DatabaseError("quick_check did not finish")


def ts(value: float | None) -> str:
    return (
        "-"
        if value is None
        else datetime.fromtimestamp(value).astimezone().isoformat(timespec="seconds")
    )
