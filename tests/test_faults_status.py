"""``chartdrop status`` on a damaged database says "damaged or unreadable" and exits
2 (issue 12, "also seen"), even when the damage is in pages its counts never read:
a damaged queue must never look normal to the admin."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Sandbox, run_cli
from test_durability import PAGE, _last_table_page, _real_database, _run, _scramble

from daemon.queue_schema import file_intact


@pytest.mark.parametrize("where", ["header", "rows", "index"])
def test_status_on_a_damaged_database_reports_it_and_exits_2(
    tmp_path: Path, sandbox: Sandbox, where: str
) -> None:
    config, db = _real_database(tmp_path, sandbox)
    # status --json and the healthy status in-process (the same entry point), status
    # itself as the process an admin runs
    healthy = run_cli("status", "-c", str(config))
    assert healthy.returncode == 0, healthy.stderr
    if where == "header":
        _scramble(db, 0, 100)
    elif where == "rows":  # the last page: job or event rows
        last = _last_table_page(db)
        _scramble(db, last * PAGE + 8, (last + 1) * PAGE)
    else:  # the page before it: whatever it holds, status's queries may not read it
        last = _last_table_page(db)
        _scramble(db, (last - 1) * PAGE + 8, last * PAGE)
    assert not file_intact(db)
    damaged = db.read_bytes()
    for args in (("status",), ("status", "--json")):
        result = _run(config, *args) if args == ("status",) else run_cli(*args, "-c", str(config))
        assert result.returncode == 2, (args, result.stdout)
        assert "damaged or unreadable" in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    assert db.read_bytes() == damaged  # status only reads
