"""A Redox-shaped peer that is never the bottleneck, for the benchmark.

    python scripts/fast_peer.py [--latency SECONDS]   # prints its URL, serves until killed

The sandbox (``chartdrop sandbox``) checks every body against the Redox models
and stores it: it answers about 90 requests a second on two cores, so a
benchmark against it measures the sandbox. This peer does only what a client
needs to see a real answer: ``POST /v2/auth/token`` gives a bearer token,
``POST /endpoint`` a 200 with ``Meta.Logs[0].ID``, ``POST /upload`` a 201 with a
``URI``; ``POST /_sandbox/faults`` with ``{"latency_seconds": s}`` sets the
delay before every answer (the bench's ``Peer.set_delay``). Bodies are read
and dropped, unchecked (correctness is the test suite's job, against the
sandbox). HTTP/1.1 keep-alive on 127.0.0.1, one asyncio loop, standard
library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

_latency = 0.0


def _answer(status: int, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _route(method: str, path: str, body: bytes) -> bytes:
    global _latency
    if method == "POST" and path == "/v2/auth/token":
        token = {"access_token": uuid.uuid4().hex, "token_type": "bearer", "expires_in": 3600}
        return _answer(200, token | {"scope": "*"})
    if method == "POST" and path == "/endpoint":
        log = {"ID": str(uuid.uuid4()), "AttemptID": str(uuid.uuid4())}
        return _answer(200, {"Meta": {"Logs": [log]}})
    if method == "POST" and path == "/upload":
        return _answer(201, {"URI": f"https://blob.example/{uuid.uuid4().hex}"})
    if path == "/_sandbox/faults":
        if method == "POST":
            _latency = float(json.loads(body or b"{}").get("latency_seconds", _latency))
        return _answer(200, {"latency_seconds": _latency})
    return _answer(404, {"error": "not found"})


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            fields = (line.partition(":") for line in lines[1:] if line)
            headers = {k.strip().lower(): v.strip() for k, _, v in fields}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            if _latency:
                await asyncio.sleep(_latency)
            writer.write(_route(method, target.split("?", 1)[0], body))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _main(latency: float) -> None:
    global _latency
    _latency = latency
    server = await asyncio.start_server(_serve, "127.0.0.1", 0, limit=1 << 26)
    port = server.sockets[0].getsockname()[1]
    print(f"http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.0)
    asyncio.run(_main(parser.parse_args().latency))
