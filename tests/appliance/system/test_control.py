"""The control socket, against a running appliance and on its own."""

import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appliance.system.control import ControlError, ControlServer, request
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import typewriter, wait_for


def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, as after a crash
    server = ControlServer(path, lambda r: {"ok": True, "echo": r["command"]}).start()
    try:
        assert request(path, {"command": "status"}) == {"ok": True, "echo": "status"}
        with pytest.raises(ControlError, match="in use"):
            ControlServer(path, lambda r: {}).start()
    finally:
        server.close()
    assert not path.exists()


def test_bad_requests_get_an_error_not_a_crash(tmp_path):
    path = tmp_path / "control.sock"
    server = ControlServer(path, lambda r: 1 / 0).start()
    try:
        for raw in (b"not json\n", b"[1, 2]\n", b"\xff\xfe\n"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                s.sendall(raw)
                answer = json.loads(s.makefile().readline())
            assert answer["ok"] is False and "bad request" in answer["error"]
        assert request(path, {"command": "boom"})["ok"] is False
        assert request(path, {"command": "status"})["ok"] is False, "the server still serves"
    finally:
        server.close()


def test_no_appliance_is_a_clear_error(tmp_path):
    result = typewriter("ctl", "status", "--control", str(tmp_path / "none.sock"))
    assert result.returncode == 2 and "no appliance is running" in result.stderr


def test_ctl_drives_a_running_appliance(tmp_path, script_persona):
    control = tmp_path / "control.sock"
    with SimulatedTypewriter(cps=2000, cr_seconds=0) as sim:
        app = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--port",
                                sim.start(), "--persona", str(script_persona), "--state-dir",
                                str(tmp_path / "state"), "--control", str(control)],
                               stderr=subprocess.PIPE)
        try:
            assert wait_for(control.exists, 30)
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: "home." in sim.paper.text(), 30)
            status = json.loads(typewriter("ctl", "status", "--json", "--control",
                                           str(control)).stdout)
            assert status["link"] == "up" and status["exchanges"] == status["replies"] == 1
            assert status["last_reply"].startswith("Good morrow")
            # Idle once nothing is left to generate or print (the boot test waits on it).
            assert wait_for(lambda: json.loads(typewriter(
                "ctl", "status", "--json", "--control", str(control)).stdout)["idle"], 10)
            talked = status["context_tokens"]
            assert 0 < talked < status["n_ctx"]
            readable = typewriter("ctl", "status", "--control", str(control)).stdout
            assert "Juliet: typewriter connected" in readable
            # Prefill may still be evaluating the (empty) next line: the count only grows.
            shown = re.search(r"context: (\d+) of (\d+) tokens", readable)
            assert shown and talked <= int(shown[1]) < int(shown[2]) == status["n_ctx"], readable
            assert typewriter("ctl", "print", "A note from", "SSH", "--control",
                              str(control)).returncode == 0
            assert wait_for(lambda: "A note from SSH" in sim.paper.text(), 10)
            assert typewriter("ctl", "reset", "--control", str(control)).returncode == 0
            status = json.loads(typewriter("ctl", "status", "--json", "--control",
                                           str(control)).stdout)
            assert status["exchanges"] == 0 and status["replies"] == 1
            # The new conversation keeps only the persona's frame in the model's cache.
            assert wait_for(lambda: json.loads(typewriter(
                "ctl", "status", "--json", "--control", str(control)).stdout)[
                "context_tokens"] < talked, 10)
            refused = typewriter("ctl", "say", "hi", "--control", str(control))
            assert refused.returncode == 2 and "not available" in refused.stderr
        finally:
            app.terminate()
            app.wait(10)
    assert not control.exists(), "the socket is removed on a clean stop"


# -- the group check, as real unprivileged users (issue #18 D) --------------------------

CLIENT = r"""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect": e.strerror}))
    sys.exit(0)
s.sendall(b'{"command": "status"}\n')
print(json.dumps({"uid": os.getuid(), "groups": os.getgroups(),
                  "answer": json.loads(s.makefile().readline())}))
"""


def _run(*command):
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@pytest.fixture
def users(tmp_path):
    """A socket group, a member of it and an outsider: throwaway system accounts."""
    tools = [shutil.which(t) for t in ("useradd", "groupadd", "userdel", "groupdel")]
    if os.geteuid() != 0:
        pytest.skip("needs root: creates throwaway users and groups")
    if None in tools:
        pytest.skip("needs useradd, groupadd, userdel and groupdel (apt-get install passwd)")
    tag = f"tw{os.getpid() % 100000}"
    names = {"group": f"{tag}ctl", "member": f"{tag}mem", "outsider": f"{tag}out"}
    made_users, made_groups = [], []
    try:
        _run("groupadd", "--system", names["group"])
        made_groups.append(names["group"])
        _run("useradd", "--system", "--no-create-home", "--user-group", "--shell",
             "/usr/sbin/nologin", "--groups", names["group"], names["member"])
        made_users.append(names["member"])
        _run("useradd", "--system", "--no-create-home", "--user-group", "--shell",
             "/usr/sbin/nologin", names["outsider"])
        made_users.append(names["outsider"])
        yield {key: (pwd.getpwnam(name) if key != "group" else grp.getgrnam(name))
               for key, name in names.items()}
    finally:
        for name in made_users:
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
        for name in made_groups:
            subprocess.run(["groupdel", name], capture_output=True, timeout=30)


@pytest.fixture
def served(users):
    """A control server whose socket belongs to the throwaway group (root owns it, as
    the service's RuntimeDirectory would), in a folder anyone may enter."""
    folder = Path(tempfile.mkdtemp(prefix="tw-control-"))
    try:
        os.chown(folder, 0, users["group"].gr_gid)
        os.chmod(folder, 0o2755)  # setgid: the socket is created in the folder's group
        path = folder / "control.sock"
        server = ControlServer(path, lambda r: {"ok": True, "echo": r["command"]}).start()
        assert os.stat(path).st_gid == users["group"].gr_gid
        try:
            yield path
        finally:
            server.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_user(path, account, extra_groups=()):
    """The client run as that user (its own primary group, only the extra groups given)."""
    result = subprocess.run([PYTHON, "-c", CLIENT, str(path)], user=account.pw_uid,
                            group=account.pw_gid, extra_groups=list(extra_groups),
                            capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def test_a_member_of_the_socket_group_is_served(served, users):
    group = users["group"].gr_gid
    reply = as_user(served, users["member"], extra_groups=[group])
    assert group in reply["groups"] and reply["uid"] == users["member"].pw_uid
    assert reply["answer"] == {"ok": True, "echo": "status"}


def test_an_outsider_cannot_even_connect_to_the_socket_as_shipped(served, users):
    assert os.stat(served).st_mode & 0o777 == 0o660
    assert as_user(served, users["outsider"]) == {"connect": "Permission denied"}


def test_an_outsider_past_the_file_mode_is_refused_by_the_group_check(served, users):
    os.chmod(served, 0o666)  # as if the mode were lost: SO_PEERCRED still decides
    reply = as_user(served, users["outsider"])
    assert reply["answer"] == {"ok": False, "error": "not allowed: join the socket's group"}
    reply = as_user(served, users["member"], extra_groups=[users["group"].gr_gid])
    assert reply["answer"]["ok"] is True


def test_the_groups_the_process_holds_decide_not_etc_group(served, users):
    """A process holding the group without /etc/group listing it (systemd's
    SupplementaryGroups=, newgrp, sg) may connect to the 0660 socket: it is served.
    A member listed in /etc/group whose process does not hold the group (added since it
    logged in) cannot connect: the kernel refuses, the check agrees."""
    group = users["group"].gr_gid
    reply = as_user(served, users["outsider"], extra_groups=[group])
    assert reply["answer"] == {"ok": True, "echo": "status"}
    os.chmod(served, 0o666)
    reply = as_user(served, users["member"])
    assert reply["answer"]["ok"] is False
