"""The host link over a real pseudo-terminal, against the firmware's own protocol logic."""

import logging
import os
import threading
import time
import tty

import pytest

from firmware_bridge.board import messages as m
from firmware_bridge.board.device import Device
from firmware_bridge.host.link import DEAD_AFTER, Link
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import wait_for


class Board:
    """A typewriter board on a pty: the firmware's Device, pumped by a thread.

    `silent` makes it stop answering (a hung or unplugged board) without
    closing the pty, so the host's liveness check is what notices.
    """

    def __init__(self, print_capacity: int = 512):
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.device = Device("test board", 0xB0A2D001, time.monotonic,
                             print_capacity=print_capacity)
        self.paper = bytearray()
        self.silent = False
        self.hold_print = False
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.device.boot()
        os.set_blocking(self.master, False)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                data = os.read(self.master, 512)
            except (BlockingIOError, OSError):
                data = b""
            with self.lock:
                if self.silent:
                    data = b""
                else:
                    if data:
                        self.device.feed(data)
                    while not self.hold_print:
                        byte = self.device.next_print_byte()
                        if byte is None:
                            break
                        self.paper.append(byte)
                        self.device.printed(byte)
                    out = self.device.output()
                    if out:
                        try:
                            os.write(self.master, out)
                        except OSError:
                            pass
            time.sleep(0.002)

    def type(self, text: bytes) -> None:
        with self.lock:
            for code in text:
                self.device.type_key(code)

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        os.close(self.master)
        os.close(self.slave)


class Rig:
    """A board and a host link to it, with what the link reported."""

    def __init__(self, print_capacity=512):
        self.board = Board(print_capacity)
        self.keys, self.changes = [], []
        self.link = Link(self.board.path, on_keys=lambda boot, seq, codes: self.keys.extend(codes)
                         or True, on_change=self.changes.append).open()
        assert wait_for(lambda: self.link.up)

    def close(self):
        self.link.close()
        self.board.close()


@pytest.fixture
def rig(request):
    r = Rig(getattr(request, "param", 512))
    yield r
    r.close()


def test_handshake_and_keys_in_order_exactly_once(rig):
    assert rig.link.peer_name == "test board" and "up" in rig.changes
    text = bytes(range(0x20, 0x7F)) * 5
    rig.board.type(text)
    assert wait_for(lambda: len(rig.keys) >= len(text))
    time.sleep(0.3)
    assert bytes(rig.keys) == text


@pytest.mark.parametrize("rig", [40], indirect=True)
def test_print_text_respects_credits_and_arrives_whole(rig):
    rig.board.hold_print = True
    text = "Good morrow, gentle friend.\n" * 10
    rig.link.print_text(text)
    time.sleep(1.0)
    assert rig.link.unprinted > 0, "the host must wait for credits, not overrun the board"
    rig.board.hold_print = False
    assert wait_for(lambda: rig.link.unprinted == 0 and bytes(rig.board.paper) == text.encode())


@pytest.mark.parametrize("rig", [64], indirect=True)
def test_cancel_drops_what_is_not_printed(rig):
    rig.board.hold_print = True
    rig.link.print_text("x" * 500)
    time.sleep(0.5)
    rig.link.cancel()
    assert wait_for(lambda: rig.link.unprinted == 0)
    time.sleep(0.3)
    rig.board.hold_print = False
    time.sleep(0.5)
    assert len(rig.board.paper) <= 64
    rig.link.print_text("after\n")
    assert wait_for(lambda: bytes(rig.board.paper).endswith(b"after\n"))


def test_silent_board_is_declared_down_then_reconnected(rig):
    rig.board.silent = True
    assert wait_for(lambda: not rig.link.up, DEAD_AFTER + 3)
    assert "down" in rig.changes
    rig.board.type(b"while away")
    rig.board.silent = False
    assert wait_for(lambda: rig.link.up, 5)
    assert wait_for(lambda: bytes(rig.keys) == b"while away", 5)


def test_overflow_flag_is_reported(rig):
    rig.board.silent = True
    rig.board.type(b"a" * 700)
    rig.board.silent = False
    assert wait_for(lambda: rig.link.overflow, 8)
    assert "overflow" in rig.changes
    assert rig.link.flags & m.FLAG_OVERFLOW


# -- the host checks the peer (issue #18 B): the simulated typewriter on a pty ----------

class SimRig:
    """The firmware in the simulated typewriter, its protocol version and caps as given,
    and a host link to it."""

    def __init__(self, version=m.VERSION, caps=None, wait_up=True):
        self.sim = SimulatedTypewriter(cps=2000, cr_seconds=0)
        session = self.sim.device.session
        session.version = version
        if caps is not None:
            session.caps = caps
        self.keys, self.changes = [], []
        self.link = Link(self.sim.start(), on_keys=lambda boot, seq, codes:
                         self.keys.extend(codes) or True, on_change=self.changes.append).open()
        if wait_up:
            assert wait_for(lambda: self.link.up, 5)

    def close(self):
        self.link.close()
        self.sim.stop()


def test_a_firmware_speaking_another_protocol_version_is_refused(caplog):
    caplog.set_level(logging.INFO, "firmware_bridge.host.link")
    rig = SimRig(version=2, wait_up=False)
    try:
        assert wait_for(lambda: rig.link.refused, 5)
        rig.sim.type_text("lost?")
        time.sleep(1.5)
        assert not rig.link.up and "up" not in rig.changes and "refused" in rig.changes
        assert rig.keys == [], "no key is taken from a peer whose frames we cannot read"
        assert rig.link.refused == ("the typewriter speaks protocol 2, this appliance 1: "
                                    "update the appliance, or put this appliance's firmware "
                                    "on it with typewriter firmware flash")
        refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(refusals) == 1 and rig.link.refused in refusals[0].getMessage()
        rig.link.print_text("nothing\n")
        time.sleep(0.5)
        assert rig.sim.paper.text() == "lost?", "only what was typed: nothing printed"
        # Reflashed: the same board now speaks protocol 1 and says HELLO again.
        with rig.sim._lock:
            rig.sim.device.session.version = m.VERSION
            rig.sim.device.session.boot_id = 0x51515151
            rig.sim.device.boot()
        assert wait_for(lambda: rig.link.up, 5)
        assert rig.link.refused is None
        assert wait_for(lambda: bytes(rig.keys) == b"lost?", 5)
    finally:
        rig.close()


def test_an_older_firmware_is_told_to_be_flashed():
    rig = SimRig(version=0, wait_up=False)
    try:
        assert wait_for(lambda: rig.link.refused, 5)
        assert rig.link.refused == ("the typewriter speaks protocol 0, this appliance 1: "
                                    "update its firmware with typewriter firmware flash")
        assert not rig.link.up
    finally:
        rig.close()


def test_no_bell_cap_strips_bells_from_print_text():
    rig = SimRig(caps=m.CAP_KEYBOARD | m.CAP_PRINTER)
    try:
        rig.link.print_text("ding\x07 dong\x07\n")
        assert wait_for(lambda: rig.sim.paper.text() == "ding dong\n" and rig.link.unprinted == 0)
        assert rig.sim.wait_printed(5)
        assert rig.sim.bells == 0 and rig.sim.device.printed_count == len("ding dong\n")
    finally:
        rig.close()


def test_bell_cap_keeps_the_bell():
    rig = SimRig()
    try:
        rig.link.print_text("ding\x07\n")
        assert wait_for(lambda: rig.sim.bells == 1 and rig.sim.paper.text() == "ding\n")
    finally:
        rig.close()


def test_no_printer_cap_drops_print_text_with_one_log_line(caplog):
    caplog.set_level(logging.INFO, "firmware_bridge.host.link")
    rig = SimRig(caps=m.CAP_KEYBOARD)
    try:
        rig.link.print_text("never\n")
        rig.link.print_text("struck\n")
        assert wait_for(lambda: rig.link.unprinted == 0, 2)
        time.sleep(0.5)
        assert rig.sim.paper.text() == "" and rig.sim.device.printed_count == 0
        drops = [r.getMessage() for r in caplog.records if "no printer" in r.getMessage()]
        assert len(drops) == 1, drops
        rig.sim.type_text("keys still work")
        assert wait_for(lambda: bytes(rig.keys) == b"keys still work", 5)
    finally:
        rig.close()
