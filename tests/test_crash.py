"""Crash safety under random SIGKILLs: the real daemon as a subprocess, killed and
restarted while documents arrive, against the sandbox with ~10% errors: 503s,
200s with an HTML page (a proxy) and answers cut after the document was stored.

The harness and its checks live in tests/crash_harness.py. The short run is in
the default suite; the full run (1,000 documents, 100 kills) is

    uv run pytest -m slow -n 0 -s tests/test_crash.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Sandbox
from crash_harness import run_soak


@pytest.mark.timeout(300)  # ~20 s alone; a loaded 2-core machine has taken 60
def test_short_crash_soak(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    # One worker: a kill then interrupts at most one send, so at most one resend per kill.
    # Few kills (each restart is a whole process start-up), so half of them are aimed
    # at a moment a send is in flight; the rest land at random, some in start-up.
    figures = run_soak(
        tmp_path, sandbox, documents=40, kills=5, seed=7, workers=1, max_up=1.5,
        busy_kill_fraction=0.5,
    )  # fmt: skip
    assert figures.problems == []
    assert figures.lost == 0
    # at most one resend per kill (or per answer the sandbox cut after storing) ...
    assert figures.duplicates <= figures.kills + figures.resets
    assert figures.most_resends_per_kill <= 1  # ... and never two from one kill
    assert figures.wrongly_in_done == 0
    # the kills hit work: restarts found interrupted sends or hand-overs to recover
    # (the daemon's own count, not the harness's)
    assert figures.interrupted >= 1
    assert figures.injected_errors > 0  # the sandbox really did fail requests
    assert figures.html_200s > 0 and figures.resets > 0  # with 200 pages and cut answers
    assert figures.uploads > 0  # and large documents really went through the blob upload
    assert "crash soak: documents=40" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_full_crash_soak(tmp_path: Path, sandbox: Sandbox) -> None:
    figures = run_soak(
        tmp_path, sandbox, documents=1000, kills=100, seed=11, workers=2, drain_timeout=600
    )
    assert figures.problems == []
    assert figures.lost == 0
    assert figures.wrongly_in_done == 0
    assert figures.html_200s > 0 and figures.resets > 0
    assert figures.duplicates <= 2 * 100  # two workers: each kill cuts at most two sends
    assert figures.most_resends_per_kill <= 2
