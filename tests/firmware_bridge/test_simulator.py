"""The simulated typewriter over a real pty, driven by a host through pyserial."""

import time

import serial

from firmware_bridge import messages as m
from firmware_bridge.session import Session
from firmware_bridge.simulator import Paper, SimulatedTypewriter


class Host:
    """The smallest host: a Session on a pyserial port."""

    def __init__(self, path):
        self.keys = bytearray()
        self.events = []
        self.session = Session(0, "test host", 77, time.monotonic,
                               on_reliable=lambda t, b: self.keys.extend(b) or True)
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
