"""A local, Redox-compatible HTTP API (and a FHIR R4 Media endpoint) for the
demo, the tests and the benchmarks.

It runs on loopback only and needs no credentials of its own: register a
client's public key with :meth:`SandboxState.register_client` (a legacy key
with :meth:`~SandboxState.register_legacy_key`, a FHIR client with
:meth:`~SandboxState.register_fhir_client`), serve :func:`create_app` with
:class:`SandboxServer`, and inject faults with :meth:`SandboxState.set_faults`.
"""

from daemon.sandbox.app import create_app
from daemon.sandbox.keys import generate_keypair, make_client_assertion
from daemon.sandbox.server import SandboxServer, serve_forever
from daemon.sandbox.state import AttemptRecord, Faults, FhirReceived, Received, SandboxState

__all__ = [
    "AttemptRecord",
    "Faults",
    "FhirReceived",
    "Received",
    "SandboxServer",
    "SandboxState",
    "create_app",
    "generate_keypair",
    "make_client_assertion",
    "serve_forever",
]
