"""systemd's service notification protocol (``sd_notify``), for ``Type=notify``.

The daemon tells systemd ``READY=1`` once start-up recovery is done and the
observer and workers run, keeps a ``STATUS=`` line of counts current, pings
``WATCHDOG=1`` from its main loop while every worker and the observer are
healthy, and says ``RELOADING=1`` / ``STOPPING=1`` around a reload and at shutdown.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket named
by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
systemd documents it as a stable interface that may be reimplemented
(sd_notify(3), "Notes"). It is written out here instead of taken from PyPI:
``sdnotify`` and ``sd-notify`` have had no release since 2017 and 2020,
``systemd-python`` ships no wheels (it needs a C compiler and libsystemd-dev
on the clinic server), and ``cysystemd`` bundles its own copy of libsystemd and
libgcrypt into the hardened process for what is a ``sendto()``.

Without ``$NOTIFY_SOCKET`` (a terminal, the tests, ``Type=exec``) every call is
a no-op. A failed send is logged once and never raised: telling systemd is
never a reason for the daemon to stop.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

from daemon.logs import get_logger


def socket_address(value: str) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as a socket address: a path, or an abstract name
    (``@name`` -> ``b"\\0name"``). None for anything else (systemd 253+ also
    knows ``vsock:``, which chartdrop does not need)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog interval systemd expects (``WatchdogSec=``), from
    ``$WATCHDOG_USEC``; None if unset, invalid or meant for another process
    (``$WATCHDOG_PID``)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends notifications to systemd; thread-safe; a no-op when not under systemd."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.log = get_logger()
        self._address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval = watchdog_seconds(env, os.getpid())
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True if it was sent."""
        if self._address is None:
            return False
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.sendto(message, self._address)
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    self.log.warning(
                        "notify.failed", exc_type=type(exc).__name__, error=exc.strerror
                    )
                return False
        self._failed = False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
