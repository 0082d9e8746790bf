"""Running the sandbox app under uvicorn, on loopback only.

:class:`SandboxServer` runs it in a daemon thread for tests and the demo
(``with SandboxServer(state) as server: ... server.url``);
:func:`serve_forever` runs it in the calling (main) thread for
``chartdrop sandbox``, stopping on SIGINT/SIGTERM through uvicorn's own
signal handling.

The listening socket is bound here, before uvicorn starts, so ``port=0``
gives a free port whose number is known at once, and a non-loopback host is
refused before anything listens.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import uvicorn
from uvicorn.server import HANDLED_SIGNALS

from daemon.sandbox.app import create_app
from daemon.sandbox.state import SandboxState

__all__ = ["SandboxServer", "serve_forever"]

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0


def _loopback_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The loopback address ``host`` names (``localhost`` is 127.0.0.1).

    Raises ValueError for anything else: the sandbox has no credentials and
    must never be reachable from another machine.
    """
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(f"the sandbox binds loopback addresses only, not {host!r}")
    return address


def _bind_loopback(host: str, port: int, scheme: str = "http") -> tuple[socket.socket, str]:
    """Bind and listen on ``host:port``; returns the socket and the base URL.

    Raises ValueError when ``host`` is not a loopback address.
    """
    address = _loopback_address(host)
    literal = str(address)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((literal, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    shown = f"[{literal}]" if address.version == 6 else literal
    return sock, f"{scheme}://{shown}:{bound_port}"


def _config(state: SandboxState, tls: tuple[str, str] | None = None) -> uvicorn.Config:
    # log_config=None leaves logging to the host process; access_log=False
    # because even a request line is more than the sandbox needs to say.
    return uvicorn.Config(
        create_app(state),
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
        log_level="warning",
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=int(STOP_TIMEOUT_SECONDS),
    )


class _Server(uvicorn.Server):
    """A uvicorn server that calls ``on_started`` once it is listening."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_started()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's signal handling, minus re-raising the signal after shutdown.

        uvicorn re-delivers a captured SIGINT/SIGTERM once it has shut down
        (killing the process, or raising KeyboardInterrupt); the sandbox's
        caller wants :func:`serve_forever` to simply return instead.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


class SandboxServer:
    """The sandbox served from a background thread on ``127.0.0.1``.

    ``start()`` returns once uvicorn is accepting connections (or raises
    RuntimeError after a timeout); ``stop()`` asks it to exit and joins the
    thread, bounded. Also a context manager. ``tls=(certfile, keyfile)`` serves
    https instead of http (tests of certificate verification).
    """

    def __init__(
        self,
        state: SandboxState,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.state = state
        self._tls = tls
        self._host = host
        self._port = port
        self._url: str | None = None
        self._sock: socket.socket | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._failed: BaseException | None = None
        _loopback_address(host)  # refuse a non-loopback host now, not at start()

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:<port>`` of the running server."""
        if self._url is None:
            raise RuntimeError("the sandbox server is not started")
        return self._url

    def start(self) -> SandboxServer:
        """Bind, start uvicorn in a daemon thread and wait until it listens."""
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already started")
        scheme = "https" if self._tls else "http"
        self._sock, self._url = _bind_loopback(self._host, self._port, scheme)
        self._server = _Server(_config(self.state, self._tls), self._started.set)
        self._thread = threading.Thread(target=self._run, name="chartdrop-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._started.wait(timeout=0.05):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the sandbox server did not start") from self._failed
        return self

    def _run(self) -> None:
        assert self._server is not None and self._sock is not None
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - incl. SystemExit from a failed startup
            self._failed = exc

    def stop(self) -> None:
        """Ask uvicorn to exit and join its thread (bounded); idempotent."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=STOP_TIMEOUT_SECONDS)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=STOP_TIMEOUT_SECONDS)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None
        self._started.clear()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_forever(
    state: SandboxState,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the sandbox in this thread until SIGINT/SIGTERM, then return normally.

    ``on_ready`` is called with the base URL once the server is listening.
    Raises ValueError for a non-loopback host and OSError if the port is taken.
    """
    sock, url = _bind_loopback(host, port)

    def started() -> None:
        if on_ready is not None:
            on_ready(url)

    with contextlib.closing(sock):
        _Server(_config(state), started).run(sockets=[sock])
