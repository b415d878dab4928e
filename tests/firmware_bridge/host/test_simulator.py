"""The simulated typewriter over a real pty, driven by a host through pyserial."""

import os
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import serial

from firmware_bridge.board import messages as m
from firmware_bridge.board.session import Session
from firmware_bridge.host.simulator import Paper, SimulatedTypewriter, read_terminal_keys
from tests.conftest import wait_for


class Host:
    """The smallest host: a Session on a pyserial port."""

    def __init__(self, path):
        self.keys = bytearray()
        self.events = []
        self.session = Session(0, "test host", 77, time.monotonic,
                               on_reliable=lambda t, s, b: self.keys.extend(b) or True)
        self.port = serial.Serial(path, 115200, timeout=0.01)
        self.session.hello()

    def pump(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.events += self.session.feed(self.port.read(256))
            out = self.session.output()
            if out:
                self.port.write(out)

    def reopen(self):
        path = self.port.port
        self.port.close()
        self.port = serial.Serial(path, 115200, timeout=0.01)
        self.session.hello()


def test_paper_overstrikes_and_backspaces():
    p = Paper(width=10)
    for ch in "abc\b\b_\nxyz":
        p.strike(ch)
    assert p.text() == "a_c\nxyz"


def test_paper_keys_lock_at_the_margin():
    p = Paper(width=5)
    for ch in "abcdefg":
        p.strike(ch)
    assert p.text() == "abcde" and p.column == 5


def test_handshake_keys_and_print_over_a_pty():
    with SimulatedTypewriter(cps=500, cr_seconds=0.01, name="sim") as sim:
        host = Host(sim.start())
        host.pump(0.3)
        assert any(e[0] == "welcome" and e[4] == "sim" for e in host.events)
        sim.type_text("hi\n")
        host.pump(0.5)
        assert bytes(host.keys) == b"hi\n"
        host.session.send(m.PRINT, b"Good morrow.\n")
        host.pump(0.5)
        assert sim.wait_printed(2)
        assert sim.paper.text() == "hi\nGood morrow.\n"
        host.port.close()


def test_bells_ring_without_moving_the_carriage():
    with SimulatedTypewriter(cps=500, cr_seconds=0.01) as sim:
        host = Host(sim.start())
        host.pump(0.2)
        host.session.send(m.PRINT, b"a\x07\x07b")
        host.pump(0.3)
        assert sim.wait_printed(2)
        assert (sim.paper.text(), sim.bells) == ("ab", 2)
        host.port.close()


def test_host_reopening_the_port_mid_session():
    with SimulatedTypewriter(cps=500, cr_seconds=0.01) as sim:
        host = Host(sim.start())
        host.pump(0.3)
        host.port.close()
        sim.type_text("typed while the port was closed")
        time.sleep(0.3)
        host.reopen()
        host.pump(1.5)
        assert bytes(host.keys) == b"typed while the port was closed"
        host.session.send(m.PRINT, b"!")
        host.pump(0.5)
        assert sim.wait_printed(2) and sim.paper.text().endswith("closed!")
        host.port.close()


def test_print_pace_follows_characters_per_second():
    with SimulatedTypewriter(cps=50, cr_seconds=0.2) as sim:
        host = Host(sim.start())
        host.pump(0.2)
        started = time.monotonic()
        host.session.send(m.PRINT, b"x" * 25 + b"\n")
        while "x" * 25 not in sim.paper.text() and time.monotonic() - started < 5:
            host.pump(0.02)
        took = time.monotonic() - started
        assert sim.wait_printed(2)
        host.port.close()
    assert took >= 25 / 50 * 0.9, "25 characters at 50 cps take about half a second"


def test_terminal_keys_map_to_typewriter_keys_and_the_tty_is_restored():
    master, slave = os.openpty()
    saved = termios.tcgetattr(slave)
    pressed = []

    class Stdin:
        def fileno(self):
            return slave

    reader = threading.Thread(target=read_terminal_keys, args=(pressed.append, Stdin()))
    reader.start()
    assert wait_for(lambda: not termios.tcgetattr(slave)[3] & termios.ICANON, 2)
    os.write(master, "ab\x7f\r\x13\x12\x10\x0e\x14\u0145\x01c\x04never".encode())
    reader.join(2)
    try:
        assert not reader.is_alive(), "Ctrl-D quits"
        assert pressed == [ord("a"), ord("b"), m.KEY_BACKSPACE, m.KEY_RETURN, m.KEY_SUBMIT,
                           m.KEY_RESET, m.KEY_REPRINT, m.KEY_NEXT_PERSONA,
                           m.KEY_TOGGLE_SPEECH, ord("c")], "UTF-8 and other controls ignored"
        assert termios.tcgetattr(slave) == saved
    finally:
        os.close(master)
        os.close(slave)


def test_simulate_command_types_a_script_and_quits_on_ctrl_c():
    code = "from firmware_bridge.host.simulator import serve; serve(65, 500.0, 0.01, 'hi\\n')"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[3])
    try:
        banner = proc.stdout.readline()
        path = banner.split()[3]
        assert banner == f"Simulated typewriter on {path} — run: typewriter run --port {path}\n"
        host = Host(path)
        host.pump(1.5)
        assert bytes(host.keys) == b"hi\n"
        host.port.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    out = proc.stdout.read()  # not communicate(): it would skip what readline buffered
    assert proc.returncode == 0
    assert out.endswith("hi\n"), "the paper is echoed as it is struck"
