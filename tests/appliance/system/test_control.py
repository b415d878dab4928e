"""The control socket, against a running appliance and on its own."""

import json
import socket
import subprocess
import sys

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
            talked = status["context_tokens"]
            assert 0 < talked < status["n_ctx"]
            readable = typewriter("ctl", "status", "--control", str(control)).stdout
            assert "Juliet: typewriter connected" in readable
            assert f"context: {talked} of {status['n_ctx']} tokens" in readable
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
