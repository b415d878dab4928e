"""The host link over a real pseudo-terminal, against the firmware's own protocol logic."""

import os
import threading
import time
import tty

from firmware_bridge import messages as m
from firmware_bridge.device import Device
from firmware_bridge.link import DEAD_AFTER, Link


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


def wait_for(condition, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def make_link(board, **kw):
    keys, changes = [], []
    link = Link(board.path, on_key=keys.append, on_change=changes.append, **kw).open()
    return link, keys, changes


def test_handshake_and_keys_in_order_exactly_once():
    board = Board()
    link, keys, changes = make_link(board)
    try:
        assert wait_for(lambda: link.up)
        assert link.peer_name == "test board"
        text = bytes(range(0x20, 0x7F)) * 5
        board.type(text)
        assert wait_for(lambda: len(keys) >= len(text))
        time.sleep(0.3)
        assert bytes(keys) == text
        assert "up" in changes
    finally:
        link.close()
        board.close()


def test_print_text_respects_credits_and_arrives_whole():
    board = Board(print_capacity=40)
    link, _, _ = make_link(board)
    try:
        assert wait_for(lambda: link.up)
        board.hold_print = True
        text = "Good morrow, gentle friend.\n" * 10
        link.print_text(text)
        time.sleep(1.0)
        assert link.unprinted > 0, "the host must wait for credits, not overrun the board"
        board.hold_print = False
        assert wait_for(lambda: link.unprinted == 0 and bytes(board.paper) == text.encode())
    finally:
        link.close()
        board.close()


def test_cancel_drops_what_is_not_printed():
    board = Board(print_capacity=64)
    link, _, _ = make_link(board)
    try:
        assert wait_for(lambda: link.up)
        board.hold_print = True
        link.print_text("x" * 500)
        time.sleep(0.5)
        link.cancel()
        assert wait_for(lambda: link.unprinted == 0)
        time.sleep(0.3)
        board.hold_print = False
        time.sleep(0.5)
        assert len(board.paper) <= 64
        link.print_text("after\n")
        assert wait_for(lambda: bytes(board.paper).endswith(b"after\n"))
    finally:
        link.close()
        board.close()


def test_silent_board_is_declared_down_then_reconnected():
    board = Board()
    link, keys, changes = make_link(board)
    try:
        assert wait_for(lambda: link.up)
        board.silent = True
        assert wait_for(lambda: not link.up, DEAD_AFTER + 3)
        assert "down" in changes
        board.type(b"while away")
        board.silent = False
        assert wait_for(lambda: link.up, 5)
        assert wait_for(lambda: bytes(keys) == b"while away", 5)
    finally:
        link.close()
        board.close()


def test_overflow_flag_is_reported():
    board = Board()
    link, keys, changes = make_link(board)
    try:
        assert wait_for(lambda: link.up)
        board.silent = True
        board.type(b"a" * 700)
        board.silent = False
        assert wait_for(lambda: link.overflow, 8)
        assert "overflow" in changes
        assert link.flags & m.FLAG_OVERFLOW
    finally:
        link.close()
        board.close()
