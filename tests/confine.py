"""Run a command under the seccomp and memory restrictions of systemd/chartdrop.service,
the way systemd 252 applies them, where no systemd is PID 1 (this machine, CI).

    python tests/confine.py UNIT [--mdwe-prctl] -- COMMAND...

Reads the unit's directives and, in this process, before ``execve(COMMAND)``:

- ``SystemCallFilter=`` (allow-list, then ``~`` deny lines, in order), with the
  groups expanded from the installed ``systemd-analyze syscall-filter`` -- the
  same tables systemd uses -- and ``SystemCallErrorNumber=`` as the action;
- ``SystemCallArchitectures=native``: only the native ABI (libseccomp's default);
- ``MemoryDenyWriteExecute=yes`` as systemd 252 does it (seccomp): no mmap that
  is both writable and executable, no mprotect/pkey_mprotect adding PROT_EXEC,
  no shmat with SHM_EXEC; ``--mdwe-prctl`` also sets the kernel's PR_SET_MDWE
  (Linux 6.3+), which newer systemd versions use;
- ``RestrictAddressFamilies=``: socket() of another family fails EAFNOSUPPORT;
- ``RestrictNamespaces=yes``: clone/unshare with namespace flags and setns fail,
  clone3 fails ENOSYS (glibc then uses clone), as systemd does;
- ``LockPersonality=``, ``RestrictRealtime=``, ``RestrictSUIDSGID=``.

Each feature is its own filter, stacked as systemd stacks them; the kernel takes
the strictest answer. ``NoNewPrivileges=`` and the empty capability bounding set
come from ``setpriv`` around this script. Mount-namespace directives
(ProtectSystem=, PrivateTmp=, ...) and User= are not emulated here.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
SCHED_FIFO, SCHED_RR, SCHED_DEADLINE = 1, 2, 6
AF_MAX = 46
PER_LINUX = 0


def directives(unit: Path) -> list[tuple[str, str]]:
    """(key, value) for every line of the unit's [Service] section, in order."""
    out: list[tuple[str, str]] = []
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def syscall_groups() -> dict[str, list[str]]:
    """Every @group with its members, from the installed systemd."""
    text = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups[name], groups)
        else:
            out.add(name)
    return out


def allowed_syscalls(settings: list[tuple[str, str]], groups: dict[str, list[str]]) -> set[str]:
    """systemd's rule: the first line decides allow- or deny-list; later lines add or remove."""
    allowed: set[str] | None = None
    for key, value in settings:
        if key != "SystemCallFilter":
            continue
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        if allowed is None:
            if deny:
                raise SystemExit("a deny-list first is not what chartdrop.service uses")
            allowed = names
        elif deny:
            allowed -= names
        else:
            allowed |= names
    if allowed is None:
        raise SystemExit("the unit has no SystemCallFilter=")
    return allowed


def _known(seccomp: object, name: str) -> bool:
    try:
        return int(seccomp.resolve_syscall(seccomp.system_arch(), name)) >= 0  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a name this architecture does not have
        return False


def confine(unit: Path, *, mdwe_prctl: bool) -> None:
    import pyseccomp as seccomp

    settings = directives(unit)
    values = dict(settings)
    number = values.get("SystemCallErrorNumber", "")
    action = seccomp.ERRNO(getattr(errno, number)) if number else seccomp.KILL_PROCESS

    allow = seccomp.SyscallFilter(defaction=action)
    for name in sorted(allowed_syscalls(settings, syscall_groups())):
        if _known(seccomp, name):
            allow.add_rule(seccomp.ALLOW, name)
    filters = []

    if values.get("MemoryDenyWriteExecute") == "yes":
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        wx = PROT_WRITE | PROT_EXEC
        f.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        for name in ("mprotect", "pkey_mprotect"):
            f.add_rule(
                seccomp.ERRNO(errno.EPERM),
                name,
                seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC),
            )
        f.add_rule(
            seccomp.ERRNO(errno.EPERM),
            "shmat",
            seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC),
        )
        filters.append(f)

    families = values.get("RestrictAddressFamilies", "").split()
    if families:
        keep = {int(getattr(socket, name)) for name in families}
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for af in range(AF_MAX):
            if af not in keep:
                f.add_rule(
                    seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, af)
                )
        f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GE, AF_MAX))
        filters.append(f)

    if values.get("RestrictNamespaces") == "yes":
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for flag in NAMESPACE_FLAGS:
            for name in ("clone", "unshare"):
                f.add_rule(
                    seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)
                )
        f.add_rule(seccomp.ERRNO(errno.EPERM), "setns")
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        filters.append(f)

    if values.get("LockPersonality") == "yes":
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        f.add_rule(
            seccomp.ERRNO(errno.EPERM),
            "personality",
            seccomp.Arg(0, seccomp.NE, PER_LINUX),  # systemd: anything but the current persona
        )
        filters.append(f)

    if values.get("RestrictRealtime") == "yes":
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for policy in (SCHED_FIFO, SCHED_RR, SCHED_DEADLINE):
            f.add_rule(
                seccomp.ERRNO(errno.EPERM), "sched_setscheduler", seccomp.Arg(1, seccomp.EQ, policy)
            )
        filters.append(f)

    if values.get("RestrictSUIDSGID") == "yes":
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        for bit in (stat.S_ISUID, stat.S_ISGID):
            for name, arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2)):
                f.add_rule(
                    seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(arg, seccomp.MASKED_EQ, bit, bit)
                )
        filters.append(f)

    if mdwe_prctl:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise SystemExit(f"PR_SET_MDWE failed: {os.strerror(ctypes.get_errno())}")

    if values.get("SystemCallArchitectures", "native") != "native":
        raise SystemExit("only SystemCallArchitectures=native is emulated")
    # as systemd does, the syscall allow-list goes last: it does not allow seccomp()
    for f in [*filters, allow]:  # libseccomp sets no_new_privs first
        f.load()


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    unit = Path(options[0])
    confine(unit, mdwe_prctl="--mdwe-prctl" in options[1:])
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
