"""systemd integration: the notify protocol, spoken to a socket the test owns."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from appliance.core import loop as daemon_module
from appliance.core.loop import Appliance
from appliance.engine.worker import Engine
from appliance.persona.spec import Persona
from appliance.system.service import Notifier
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import wait_for


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def drain(sock, seconds):
    messages, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    return messages


def test_notifier_speaks_the_protocol(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.watchdog_every == 2.0
    n.ready("Juliet: typewriter connected")
    n.watchdog()
    n.stopping()
    assert drain(sock, 0.3) == ["READY=1\nSTATUS=Juliet: typewriter connected", "WATCHDOG=1",
                                "STOPPING=1"]


def test_outside_systemd_nothing_is_sent():
    n = Notifier({})
    assert not n.active and n.watchdog_every is None
    n.ready("x")  # no socket, no error


def test_watchdog_for_another_pid_is_ignored():
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                     "WATCHDOG_PID": "1"}).watchdog_every is None


def test_run_says_ready_status_watchdog_and_stopping_in_order(notify_socket, script_persona,
                                                              tmp_path):
    path, sock = notify_socket
    with SimulatedTypewriter(cps=2000, cr_seconds=0) as sim:
        port = sim.start()
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        app = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--port", port,
                                "--persona", str(script_persona), "--state-dir",
                                str(tmp_path / "state"), "--control", str(tmp_path / "c.sock")],
                               env=env, stderr=subprocess.PIPE)
        try:
            messages = drain(sock, 3.0)
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: "home." in sim.paper.text(), 30)
            messages += drain(sock, 1.0)
            app.send_signal(signal.SIGTERM)
            assert app.wait(20) == 0
            messages += drain(sock, 0.5)
        finally:
            if app.poll() is None:
                app.kill()
    kinds = [m.split("=")[0] for m in messages]
    first_ready = kinds.index("READY")
    assert "EXTEND_TIMEOUT_USEC" in kinds[:first_ready]
    assert kinds.count("WATCHDOG") >= 3
    assert kinds[-1] == "STOPPING"
    assert first_ready < kinds.index("WATCHDOG")
    assert any("last reply: Good morrow" in m for m in messages), "STATUS tells the last reply"


def test_a_hung_model_worker_stops_the_pings(notify_socket, script_persona, monkeypatch):
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setattr(daemon_module, "HUNG_AFTER", 0.5)
    persona = Persona.load(script_persona)
    engine = Engine(persona.model_path, n_ctx=512, n_threads=2).start()
    sim = SimulatedTypewriter(cps=2000, cr_seconds=0)
    app = Appliance(persona, engine, sim.start(), notifier=Notifier()).start()
    try:
        with app.running():
            assert "WATCHDOG=1" in drain(sock, 1.0)
            engine._jobs.put(lambda: time.sleep(2.5))  # a generation that never comes back
            time.sleep(0.8)
            drain(sock, 0.1)
            assert "WATCHDOG=1" not in drain(sock, 1.0), "a hung worker must stop the pings"
            assert "WATCHDOG=1" in drain(sock, 2.0), "pings resume once the worker moves again"
    finally:
        sim.stop()
        engine.close()


def run_logging(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JOURNAL_STREAM="8:1234")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=30)


def test_under_systemd_without_systemd_python_logs_carry_priorities():
    result = run_logging(
        "import sys; sys.modules['systemd.journal'] = None; "  # as on a board without it
        "import logging; from appliance.system.service import configure_logging; "
        "configure_logging(False); logging.getLogger('t').warning('paper out'); "
        "logging.getLogger('t').info('ready')")
    assert result.stderr.splitlines() == ["<4>t: paper out", "<6>t: ready"]


def test_under_systemd_with_systemd_python_logs_go_to_the_journal():
    pytest.importorskip("systemd.journal")
    result = run_logging(
        "import logging; from appliance.system.service import configure_logging; "
        "configure_logging(False); "
        "print(type(logging.getLogger().handlers[0]).__name__)")
    assert result.stdout.strip() == "JournalHandler", result.stderr


def test_run_waits_for_a_typewriter_that_is_not_there_yet(notify_socket, script_persona,
                                                          tmp_path):
    """No typewriter at boot is no dead appliance: run waits, says so, keeps the watchdog
    fed and the start timeout extended, then answers once the port appears."""
    path, sock = notify_socket
    port = tmp_path / "typewriter"  # not there yet
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")
    app = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--port", str(port),
                            "--persona", str(script_persona), "--state-dir",
                            str(tmp_path / "state"), "--control", str(tmp_path / "c.sock")],
                           env=env, stderr=subprocess.PIPE, text=True)
    try:
        waiting = drain(sock, 5.0)
        assert app.poll() is None, "run must not exit while the typewriter is missing"
        assert f"STATUS=waiting for the typewriter on {port}" in waiting
        assert waiting.count("WATCHDOG=1") >= 5, waiting  # every 0.5 s while waiting
        assert any(m.startswith("EXTEND_TIMEOUT_USEC=") for m in waiting)
        assert not any(m.startswith("READY=1") for m in waiting)
        with SimulatedTypewriter(cps=2000, cr_seconds=0) as sim:
            port.symlink_to(sim.start())  # the typewriter is switched on
            ready = []
            assert wait_for(lambda: ready.extend(drain(sock, 0.5)) or
                            any(m.startswith("READY=1") for m in ready), 60), ready
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: "home." in sim.paper.text(), 30), sim.paper.text()
            app.send_signal(signal.SIGTERM)
            assert app.wait(20) == 0
    finally:
        if app.poll() is None:
            app.kill()
    assert f"waiting for the typewriter on {port}" in app.stderr.read()
