"""The systemd files: they parse, point at the installed entry point, score
<= 1.5 in ``systemd-analyze security``, and the daemon (with Python's TLS stack)
still works under the unit's seccomp and memory restrictions."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import Sandbox, wait_until, write_config
from daemonproc import NotifySocket, daemon_process, tls_sandbox

from daemon.queue import JobState, Queue
from daemon.samples import sample_pdf, sample_sidecar

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "chartdrop.service"
CONFINE = Path(__file__).resolve().parent / "confine.py"
MAX_EXPOSURE = 1.5

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


def unit_lines() -> list[str]:
    return [line.strip() for line in UNIT.read_text().splitlines()]


def test_unit_runs_the_installed_entry_point_without_a_shell() -> None:
    (exec_start,) = [line for line in unit_lines() if line.startswith("ExecStart=")]
    assert exec_start.split("=", 1)[1].split() == [
        "/opt/chartdrop/venv/bin/chartdrop",
        "run",
        "-c",
        "/etc/chartdrop/chartdrop.toml",
    ]
    assert "sh -c" not in UNIT.read_text()
    for directive in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/opt/chartdrop/venv/bin/chartdrop reload -c /etc/chartdrop/chartdrop.toml"
        " --pid $MAINPID",
        "User=chartdrop",
        "SupplementaryGroups=chartdrop-scan",
        "ReadWritePaths=/srv/chartdrop",
        "UMask=0077",
        "LoadCredential=redox-key:/etc/chartdrop/credentials/redox-key",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ):
        assert directive in unit_lines()
    (watchdog,) = [line for line in unit_lines() if line.startswith("WatchdogSec=")]
    # the daemon pings every WatchdogSec/2; a stalled worker is noticed after its
    # allowance (longest HTTP timeout + 5 s, 65 s by default), then systemd acts
    assert int(watchdog.removeprefix("WatchdogSec=").removesuffix("s")) >= 60


@needs_analyze
def test_unit_verifies() -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "is not executable" not in line  # not installed on this machine
    ]
    assert problems == []


@needs_analyze
def test_security_exposure_is_at_most_1_5(tmp_path: Path) -> None:
    """Measured on a copy under a name no installed drop-in matches: --offline
    with a path still reads /etc/systemd/system/<name>.d/ drop-ins."""
    copy = tmp_path / f"chartdrop-analyze-{uuid.uuid4().hex[:8]}.service"
    shutil.copy(UNIT, copy)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_sysusers_and_tmpfiles_declare_the_user_group_and_folders() -> None:
    sysusers = (SYSTEMD / "chartdrop.sysusers.conf").read_text().splitlines()
    assert sum(line.startswith("u chartdrop ") for line in sysusers) == 1
    assert sum(line.startswith("g chartdrop-scan ") for line in sysusers) == 1
    assert any(line.startswith("m chartdrop chartdrop-scan") for line in sysusers)
    tmpfiles = [
        line.split() for line in (SYSTEMD / "chartdrop.tmpfiles.conf").read_text().splitlines()
    ]
    entries = {fields[1]: fields for fields in tmpfiles if fields and fields[0] == "d"}
    for folder in ("inbox", "done", "failed"):
        _kind, _path, mode, user, group, _age = entries[f"/srv/chartdrop/consents/{folder}"]
        assert (mode, user, group) == ("2770", "chartdrop", "chartdrop-scan")
    assert entries["/srv/chartdrop/spool"][2:5] == ["0700", "chartdrop", "chartdrop"]
    assert entries["/etc/chartdrop/credentials"][2:5] == ["0700", "root", "root"]
    # spool and folders in one writable tree: rename() cannot cross the mounts that
    # ReadWritePaths= and StateDirectory= each create; the database has its own
    assert [line for line in unit_lines() if line.startswith("ReadWritePaths=")] == [
        "ReadWritePaths=/srv/chartdrop"
    ]
    assert "StateDirectory=chartdrop" in unit_lines()
    assert "StateDirectoryMode=0700" in unit_lines()


# -- the daemon under the unit's restrictions ---------------------------------


def _confinement_available() -> str | None:
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze not installed (it supplies systemd's syscall groups)"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) not installed"
    try:
        import pyseccomp

        pyseccomp.SyscallFilter(defaction=pyseccomp.ALLOW)
    except Exception as exc:  # noqa: BLE001 - no libseccomp on this machine
        return f"libseccomp not usable ({type(exc).__name__})"
    return None


needs_confinement = pytest.mark.skipif(
    _confinement_available() is not None, reason=str(_confinement_available())
)


def confined(*, mdwe_prctl: bool = True) -> list[str]:
    """setpriv gives NoNewPrivileges= and the empty CapabilityBoundingSet=;
    tests/confine.py the seccomp filters and MemoryDenyWriteExecute=."""
    caps = ["--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
    launcher = [sys.executable, str(CONFINE), str(UNIT)]
    if mdwe_prctl:
        launcher.append("--mdwe-prctl")
    return ["setpriv", "--no-new-privs", *caps, "--", *launcher, "--"]


@needs_confinement
def test_the_restrictions_are_real() -> None:
    """The same launcher refuses what the unit forbids, so the next test means something."""
    probe = r"""
import errno, json, mmap, os, socket, tempfile
def refused(call):
    try:
        call()
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "allowed"
results = {
    "wx_mmap": refused(lambda: mmap.mmap(-1, 4096, prot=7)),  # read|write|exec
    "packet_socket": refused(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
    "netlink_socket": refused(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
    "setpriority": refused(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),
    "setuid_bit": refused(lambda: os.chmod(tempfile.mkstemp()[1], 0o4755)),
    "inet_socket": refused(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
    "unix_socket": refused(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()),
}
print(json.dumps(results))
"""
    result = subprocess.run(
        [*confined(), sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert results == {
        "wx_mmap": "EPERM",
        "packet_socket": "EAFNOSUPPORT",
        "netlink_socket": "EAFNOSUPPORT",
        "setpriority": "EPERM",
        "setuid_bit": "EPERM",
        "inet_socket": "allowed",
        "unix_socket": "allowed",
    }


@needs_confinement
@pytest.mark.parametrize("mdwe_prctl", [True, False], ids=["seccomp+prctl-mdwe", "seccomp"])
def test_the_daemon_and_its_tls_stack_work_under_the_units_restrictions(
    tmp_path: Path, sandbox: Sandbox, mdwe_prctl: bool
) -> None:
    """chartdrop run, confined like the unit: TLS to an HTTPS sandbox (test CA),
    a signed-JWT token, an embedded and an uploaded document, sd_notify, SIGHUP,
    SIGTERM."""
    config = write_config(tmp_path, sandbox)
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        with tls_sandbox(sandbox.state, tmp_path) as (url, ca):
            text = config.read_text().replace(sandbox.url, url)
            config.write_text(text.replace("[redox]\n", f'[redox]\nca_bundle = "{ca}"\n'))
            env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "2000000"}
            done = tmp_path / "consents" / "done"
            done.chmod(0o2770)  # setgid, as installed: today's folder inherits the bit
            with daemon_process(config, env, prefix=confined(mdwe_prctl=mdwe_prctl)) as daemon:
                wait_until(lambda: notify.with_key("READY", "1"), timeout=30)
                inbox = tmp_path / "consents" / "inbox"
                for name, padding in (("small.pdf", 0), ("large.pdf", 300_000)):
                    (inbox / f"{name}.json").write_text(json.dumps(sample_sidecar()))
                    (inbox / name).write_bytes(sample_pdf(name, padding=padding))
                queue = Queue(tmp_path / "state" / "chartdrop.sqlite3")
                try:
                    wait_until(lambda: len(queue.jobs(states=[JobState.DONE])) == 2, timeout=30)
                finally:
                    queue.close()
                daemon.signal(signal.SIGHUP)
                wait_until(lambda: daemon.logs("daemon.reloaded"))
                wait_until(lambda: len(notify.with_key("WATCHDOG", "1")) >= 2)
                assert daemon.stop() == 0, daemon.stderr()
            assert notify.with_key("STOPPING", "1")
            contents = [r.body["Media"]["FileContents"] for r in sandbox.state.received()]
            assert sorted(c.startswith("https://") for c in contents) == [False, True]
            assert "Traceback" not in daemon.stderr()
            assert "Operation not permitted" not in daemon.stderr()
            # RestrictSUIDSGID= refuses a chmod that names the setgid bit: the day
            # folder still gets dirs_mode (staff may open it), without the bit.
            (day,) = done.iterdir()
            assert stat.S_IMODE(day.stat().st_mode) == 0o750
            assert not daemon.logs("job.mode_not_set")
    finally:
        notify.close()


def test_confine_reads_the_units_filter_as_systemd_does() -> None:
    import confine

    groups = {"@a": ["x", "y", "@b"], "@b": ["z"], "@c": ["y"]}
    settings = [("SystemCallFilter", "@a"), ("SystemCallFilter", "~@c"), ("User", "u")]
    assert confine.allowed_syscalls(settings, groups) == {"x", "z"}
    assert ("SystemCallFilter", "~@privileged @resources") in confine.directives(UNIT)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)"
)
def test_check_refuses_folders_split_by_a_bind_mount(tmp_path: Path, sandbox: Sandbox) -> None:
    """What ReadWritePaths=/srv/chartdrop plus StateDirectory= would do: one
    filesystem, two mounts, and every rename between them fails with EXDEV.
    The bind mount is made in a private mount namespace (unshare -m)."""
    config = write_config(tmp_path, sandbox)
    done = tmp_path / "consents" / "done"
    chartdrop = Path(sys.executable).with_name("chartdrop")
    script = f'mount --bind "{done}" "{done}" && exec "{chartdrop}" check -c "{config}"'
    split = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert split.returncode == 2, split.stdout + split.stderr
    assert "must be under one mount" in split.stderr
    whole = subprocess.run(
        [str(chartdrop), "check", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert whole.returncode == 0, whole.stderr
