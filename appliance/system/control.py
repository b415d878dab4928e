"""The control socket: drive a running appliance from an SSH session.

One JSON request per connection, one JSON answer: {"command": "status"} ->
{"ok": true, ...}. The socket is mode 0660; a peer must be root, the
appliance's own user, or hold the socket's group (checked with SO_PEERCRED and
SO_PEERGROUPS; a refused peer is told so).
Commands are posted to the appliance's loop like keys, so nothing reaches
around it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from appliance.errors import UserError
from appliance.system.paths import runtime_dir

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class ControlError(UserError):
    """The socket cannot be served or reached; the message names the fix."""


SERVICE_SOCKET = Path("/run/typewriter/control.sock")  # the unit's RuntimeDirectory


def default_path() -> Path:
    """The service's own socket (its RuntimeDirectory, from inside or from an SSH session),
    else the user's."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "control.sock"
    if SERVICE_SOCKET.exists():
        return SERVICE_SOCKET
    return runtime_dir() / "control.sock"


# Linux's SO_PEERGROUPS (4.13+): the peer's supplementary groups when it connected. Python
# does not name it; 59 on the Pi's ARM and on x86 (asm-generic/socket.h).
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59 if sys.platform.startswith("linux") else None)


def _peer_groups(conn: socket.socket) -> Optional[List[int]]:
    """The groups the peer process held when it connected; None where the kernel cannot say."""
    if SO_PEERGROUPS is None:
        return None
    for room in (64, 65536):  # NGROUPS_MAX is 65536
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * room)
        except OSError as e:
            if e.errno == errno.ERANGE:
                continue
            return None
        return list(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    return None


def _peer_allowed(conn: socket.socket, group: int) -> bool:
    """Root, our own user, or a process holding the socket's group (its primary group or
    one of the supplementary groups it connected with: what the kernel checked against
    the socket's 0660, not what /etc/group says now, which may be newer than its login)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, gid = struct.unpack("3i", creds)
    if uid in (0, os.getuid()) or gid == group:
        return True
    groups = _peer_groups(conn)
    if groups is not None:
        return group in groups
    try:  # no SO_PEERGROUPS: the group's member list
        import grp
        import pwd

        name = pwd.getpwuid(uid).pw_name
        return name in grp.getgrgid(group).gr_mem
    except (KeyError, ImportError):
        return False


class ControlServer:
    """Answers requests with handler(request) -> dict, on its own thread."""

    def __init__(self, path: Path, handler: Callable[[Dict], Dict]):
        self.path = Path(path)
        self.handler = handler
        self.sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> ControlServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise ControlError(f"{self.path} is in use: another appliance is running "
                                   "(stop it, or give this one another --control path)")
            self.path.unlink()  # stale: left by a crash
            log.info("removed a stale control socket %s", self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o660)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot create the control socket {self.path}: {e}") from e
        sock.listen(4)
        sock.settimeout(0.5)
        self.sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        group = os.stat(self.path).st_gid
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    # The request is read even from a peer that is refused: closing on
                    # unread bytes resets the connection, and the peer would see a broken
                    # pipe instead of the reason.
                    data = _read_all(conn)
                    if not _peer_allowed(conn, group):
                        answer = {"ok": False, "error": "not allowed: join the socket's group"}
                    else:
                        answer = self._answer(data)
                    conn.sendall(json.dumps(answer).encode() + b"\n")
                except OSError as e:
                    log.warning("control connection failed: %s", e)

    def _answer(self, data: bytes) -> Dict:
        try:
            request = json.loads(data.decode("utf-8"))
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError("expected {\"command\": ...}")
        except (UnicodeDecodeError, ValueError) as e:
            return {"ok": False, "error": f"bad request: {e}"}
        try:
            return self.handler(request)
        except Exception as e:  # a failed command must not take the appliance down
            log.exception("control command %r failed", request.get("command"))
            return {"ok": False, "error": str(e)}

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
            if self._thread is not None:
                self._thread.join()
            try:
                self.path.unlink()
            except OSError:
                pass


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _answers(path: Path) -> bool:
    try:
        request(path, {"command": "status"}, timeout=1.0)
        return True
    except ControlError:
        return False


def request(path: Path, message: Dict, timeout: float = 10.0) -> Dict:
    """Send one request to a running appliance and return its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = _read_all(sock)
    except FileNotFoundError:
        raise ControlError(f"no appliance is running here ({path} does not exist): start "
                           "`typewriter run`, or pass --control") from None
    except OSError as e:
        raise ControlError(f"cannot reach the appliance at {path} ({e.strerror or e}): check "
                           "that `typewriter run` is running there (systemctl status "
                           "typewriter), or pass its --control") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ControlError(f"the appliance at {path} answered something that is not JSON") \
            from None


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> bool:
    """Poll condition every `every` seconds until it holds; False if not within timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True
