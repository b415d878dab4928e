"""Where a persona's validator runs: a real sandbox, picked in one place, or not at all.

The validator child (appliance.persona.validate) parses a GGUF that came from
outside with llama.cpp, whose parser has had memory-safety bugs. Its rlimits stop
a runaway; they do not stop an exploit. So the child runs in one of two
sandboxes, and `choose` is the one place that picks:

- `Bubblewrap` (the SSH receive path, `persona validate` and `install`): new
  namespaces (user, pid, net, ipc, uts, cgroup, mount), no network but a down
  loopback, read-only binds of the system's /usr and /lib, the Python prefixes, the
  package, the bundle and its base model; a private tmpfs /tmp as its work
  folder; no capabilities, its own session, killed with its parent.
- `UnitHardening` (inside typewriter.service, whose seccomp filter and
  RestrictNamespaces= forbid bwrap): the unit's hardening is the sandbox
  (PrivateNetwork=, RestrictAddressFamilies=AF_UNIX, ProtectSystem=strict,
  NoNewPrivileges=, its system call filter). The child checks that hardening on
  itself before it reads a byte of the bundle, then adds Landlock where the
  kernel and the unit's filter allow it: reads only of what a bwrap child sees,
  no writes (but /dev/null), no TCP, no signals or abstract sockets outside. The
  unit allows the three landlock calls (systemd 252's @system-service lacks them);
  on a kernel without Landlock the child sees the persona store as the service
  does, which loads the same model next anyway, and its verdict says so.

Either way the child verifies its own confinement and reports it as the first
check; if it is not confined it refuses, and with no sandbox tool at all
`choose` raises SandboxError, so a validation never runs unconfined.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import struct
import sys
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from appliance.errors import UserError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `appliance`
# The system's programs and libraries (no secrets there), bound or symlinked as they are.
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
          "/etc/ld.so.cache")
INSTALL_FIX = "install bubblewrap (apt install bubblewrap)"
OUTSIDE = f"validate outside the service (typewriter persona validate) and {INSTALL_FIX}"


class SandboxError(UserError):
    """No sandbox to validate in, or the child is not confined: nothing was validated."""


class Sandbox:
    """How to start the validator child confined; `name` is what the child checks."""

    name = ""

    def command(self, argv: List[str], reads: Sequence[Path]) -> List[str]:
        """argv wrapped so that it runs confined, seeing only `reads` (read-only)."""
        raise NotImplementedError

    def start_error(self, stderr: str) -> Optional[str]:
        """Why the sandbox itself did not start, read from the child's stderr; else None."""
        return None


class Bubblewrap(Sandbox):
    name = "bubblewrap"

    def __init__(self, bwrap: str):
        self.bwrap = bwrap

    def command(self, argv: List[str], reads: Sequence[Path]) -> List[str]:
        wrapped = [self.bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                   "--cap-drop", "ALL", "--proc", "/proc", "--dev", "/dev",
                   "--tmpfs", "/tmp", "--chdir", "/tmp"]
        for path in SYSTEM:
            if os.path.islink(path):
                wrapped += ["--symlink", os.readlink(path), path]
            elif os.path.exists(path):
                wrapped += ["--ro-bind", path, path]
        for path in reads:
            wrapped += ["--ro-bind", str(path), str(path)]
        return wrapped + ["--", *argv]

    def start_error(self, stderr: str) -> Optional[str]:
        last = (stderr.strip().splitlines() or [""])[-1]
        if not last.startswith("bwrap:"):
            return None
        hint = ("; allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)"
                if "namespace" in last or "uid map" in last or "not permitted" in last else "")
        return f"bubblewrap could not start the validator: {last}{hint}"


class UnitHardening(Sandbox):
    """The service unit's own hardening; the child checks it and adds Landlock itself."""

    name = "unit"

    def command(self, argv: List[str], reads: Sequence[Path]) -> List[str]:
        return list(argv)


def under_unit_hardening(status: Optional[str] = None,
                         environ: Optional[Mapping[str, str]] = None) -> bool:
    """Started by systemd with a system call filter and no new privileges (the unit)."""
    status = _proc_status() if status is None else status
    environ = os.environ if environ is None else environ
    return ("INVOCATION_ID" in environ and _status_field(status, "Seccomp") == "2"
            and _status_field(status, "NoNewPrivs") == "1")


def choose(path: Optional[str] = None, status: Optional[str] = None,
           environ: Optional[Mapping[str, str]] = None) -> Sandbox:
    """The sandbox for this process: the unit's, else bubblewrap; else SandboxError."""
    if under_unit_hardening(status, environ):
        return UnitHardening()
    bwrap = shutil.which("bwrap", path=path)
    if bwrap:
        return Bubblewrap(bwrap)
    raise SandboxError("no sandbox to validate the persona in, so it was not validated: "
                       f"{INSTALL_FIX}")


def runtime_paths() -> List[Path]:
    """What the child needs to run beyond the system: the Python prefixes and the package."""
    paths: List[Path] = []
    for path in (sys.prefix, sys.base_prefix, sys.exec_prefix, PACKAGE_ROOT):
        resolved = Path(path).resolve()
        if resolved not in paths and resolved != Path("/usr"):
            paths.append(resolved)
    return paths


# -- inside the child ---------------------------------------------------------------


def confine(name: str, bundle: Path, reads: Sequence[Path]) -> str:
    """Check (and, in the unit, tighten) the child's confinement; one line on what holds.

    Raises SandboxError naming what is missing: the child must then read nothing.
    """
    if name == Bubblewrap.name:
        _require(_leaks(bundle, reads), "bubblewrap", "bubblewrap 0.4 or later")
        return "bubblewrap: no network, the bundle read-only, nothing else of the store"
    if name != UnitHardening.name:
        raise SandboxError(f"unknown sandbox {name!r}")
    status = _proc_status()
    missing = [what for what, ok in (
        ("a system call filter", _status_field(status, "Seccomp") == "2"),
        ("no new privileges", _status_field(status, "NoNewPrivs") == "1"),
        ("a read-only /usr", bool(os.statvfs("/usr").f_flag & os.ST_RDONLY)),
    ) if not ok] + [m for m in _leaks(bundle, reads) if m.startswith("network")]
    _require(missing, "the unit's hardening", OUTSIDE)
    try:
        abi = landlock(reads)
    except OSError as e:
        return ("the unit's hardening (no network, read-only system); without Landlock "
                f"({e.strerror}): the store is as visible as to the service")
    _require(_leaks(bundle, reads), f"Landlock ABI {abi}", OUTSIDE)
    return f"the unit's hardening and Landlock ABI {abi}: reads only, no writes, no network"


def _require(missing: Sequence[str], sandbox: str, fix: str) -> None:
    if missing:
        raise SandboxError(f"{sandbox} does not confine the validator ({'; '.join(missing)}),"
                           f" so it read nothing: {fix}")


def _leaks(bundle: Path, reads: Sequence[Path]) -> List[str]:
    """What the child can still do that a sandboxed one must not (empty when confined)."""
    leaks = [f"network: {way}" for way in _network()]
    bound = {Path(path).relative_to(bundle.parent).parts[0] for path in reads
             if Path(path).is_relative_to(bundle.parent) and Path(path) != bundle.parent}
    try:
        others = sorted(set(os.listdir(bundle.parent)) - bound)
    except OSError:
        others = []
    if others:
        leaks.append(f"the store is visible ({len(others)} other entries beside the bundle)")
    probe = bundle / f".sandbox-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        pass
    else:
        os.unlink(probe)
        leaks.append("the bundle is writable")
    return leaks


def _network() -> List[str]:
    """Ways off this machine: interfaces but the loopback (a new network namespace has only
    its own, down), or, where the interfaces cannot be listed, IP sockets at all."""
    try:
        return [f"interface {name}" for _, name in socket.if_nameindex() if name != "lo"]
    except OSError:
        pass
    found = []
    for family, what in ((socket.AF_INET, "IPv4"), (socket.AF_INET6, "IPv6")):
        try:
            socket.socket(family, socket.SOCK_DGRAM).close()
        except OSError:
            continue
        found.append(f"{what} sockets")
    return found


def _proc_status() -> str:
    try:
        return Path("/proc/self/status").read_text()
    except OSError:
        return ""


def _status_field(status: str, key: str) -> str:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return ""


# -- Landlock (Linux 5.13+; unprivileged) --------------------------------------------

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # one numbering on every arch
_VERSION = 1  # LANDLOCK_CREATE_RULESET_VERSION
_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
# Filesystem rights known per ABI: 13 in v1, REFER in v2, TRUNCATE in v3, IOCTL_DEV in v5.
_FS_BITS = {1: 13, 2: 14, 3: 15, 4: 15, 5: 16}
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR, _IOCTL_DEV = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 15
_FILE_RIGHTS = _EXECUTE | (1 << 1) | _READ_FILE | (1 << 14) | _IOCTL_DEV
_TCP = 0b11  # LANDLOCK_ACCESS_NET_BIND_TCP | CONNECT_TCP (ABI 4)
_SCOPED = 0b11  # LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | SIGNAL (ABI 6)


def landlock(reads: Sequence[Path]) -> int:
    """Confine this process for good: read and run only `reads` and the system, write nothing.

    Returns the Landlock ABI; raises OSError where the kernel or a seccomp filter refuses.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def call(number: int, *args: object) -> int:
        result = libc.syscall(ctypes.c_long(number), *args)
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    abi = call(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION))
    handled = (1 << _FS_BITS.get(abi, 16)) - 1
    attr = struct.pack("<Q", handled)
    if abi >= 4:
        attr += struct.pack("<Q", _TCP)
    if abi >= 6:
        attr += struct.pack("<Q", _SCOPED)
    buffer = ctypes.create_string_buffer(attr, len(attr))
    ruleset = call(_CREATE_RULESET, buffer, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    try:
        readable = [*map(Path, SYSTEM), Path("/proc"), Path("/sys"), *reads]
        # /dev/null is written to: the engine sends llama.cpp's load chatter there.
        for path in readable + [Path("/dev"), Path("/dev/null")]:
            allowed = _EXECUTE | _READ_FILE | _READ_DIR | (_IOCTL_DEV if path == Path("/dev")
                                                           else 0)
            if path == Path("/dev/null"):
                allowed = _READ_FILE | _WRITE_FILE
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this system
            try:
                if not os.path.isdir(path):
                    allowed &= _FILE_RIGHTS
                rule = ctypes.create_string_buffer(struct.pack("<Qi", allowed & handled, fd), 12)
                call(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_PATH_BENEATH), rule,
                     ctypes.c_uint32(0))
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(errno.EPERM, "prctl(PR_SET_NO_NEW_PRIVS) failed")
        call(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return abi
