"""A local, Redox-compatible HTTP API for the demo, the tests and the benchmarks.

It runs on loopback only and needs no credentials of its own: register a
client's public key with :meth:`SandboxState.register_client`, serve
:func:`create_app` with :class:`SandboxServer`, and inject faults with
:meth:`SandboxState.set_faults`.
"""

from daemon.sandbox.app import create_app
from daemon.sandbox.keys import generate_keypair, make_client_assertion
from daemon.sandbox.server import SandboxServer, serve_forever
from daemon.sandbox.state import AttemptRecord, Faults, Received, SandboxState

__all__ = [
    "AttemptRecord",
    "Faults",
    "Received",
    "SandboxServer",
    "SandboxState",
    "create_app",
    "generate_keypair",
    "make_client_assertion",
    "serve_forever",
]
