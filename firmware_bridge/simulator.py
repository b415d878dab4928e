"""A simulated typewriter on a pseudo-terminal.

The same `Device` logic the firmware runs sits on one side of a pty; the
host opens the other side with pyserial like any serial port. Keys typed on
the simulated keyboard strike the paper at once (as on a real typewriter) and
are reported to the host; print bytes from the host strike the paper at the
mechanism's pace.
"""

from __future__ import annotations

import os
import random
import select
import sys
import termios
import threading
import time
import tty
from typing import Callable, List, Optional, TextIO, Tuple

from firmware_bridge import messages as m
from firmware_bridge.device import BELL, Device

# Terminal bytes that are typewriter keys other than printable ASCII.
CONTROL_KEYS = {
    0x12: m.KEY_RESET,  # Ctrl-R
    0x10: m.KEY_REPRINT,  # Ctrl-P
    0x13: m.KEY_SUBMIT,  # Ctrl-S
    0x0E: m.KEY_NEXT_PERSONA,  # Ctrl-N
    0x14: m.KEY_TOGGLE_SPEECH,  # Ctrl-T
    0x7F: m.KEY_BACKSPACE,
    0x08: m.KEY_BACKSPACE,
    0x0D: m.KEY_RETURN,
    0x0A: m.KEY_RETURN,
    0x09: m.KEY_TAB,
}


class Paper:
    """The page in the typewriter: struck characters at the carriage position."""

    def __init__(self, width: int = 65):
        self.width = width
        self.lines: List[List[str]] = [[]]
        self.column = 0

    def strike(self, ch: str) -> None:
        if ch == "\n":
            self.lines.append([])
            self.column = 0
        elif ch == "\b":
            self.column = max(0, self.column - 1)
        elif " " <= ch <= "~" and self.column < self.width:  # keys lock at the margin
            line = self.lines[-1]
            while len(line) <= self.column:
                line.append(" ")
            if ch != " ":
                line[self.column] = ch  # a strike over a character overstrikes it
            self.column += 1

    def text(self) -> str:
        return "\n".join("".join(line).rstrip() for line in self.lines)


class SimulatedTypewriter:
    """A typewriter with keyboard and print mechanism, behind a pty."""

    def __init__(self, width: int = 65, cps: float = 12.0, cr_seconds: float = 0.5,
                 name: str = "simulated typewriter", boot_id: Optional[int] = None,
                 on_strike: Optional[Callable[[str], None]] = None, record: bool = False):
        self.paper = Paper(width)
        self.cps = cps
        self.cr_seconds = cr_seconds
        self.on_strike = on_strike or (lambda ch: None)
        self.bells = 0
        # With record on, (time, bytes) of every PRINT body accepted and (time, byte)
        # of every printed byte, for benchmarks measuring what reaches the paper when.
        self.record = record
        self.received: List[Tuple[float, int]] = []
        self.struck: List[Tuple[float, int]] = []
        self.device = Device(name, boot_id if boot_id is not None else random.getrandbits(32),
                             time.monotonic)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._busy_until = 0.0
        self._striking: Optional[int] = None
        self.master = self.slave = self._wake_r = self._wake_w = -1
        self.path = ""

    def start(self) -> str:
        """Open the pty and start the typewriter; returns the device path for the host."""
        self.master, self.slave = os.openpty()
        self._wake_r, self._wake_w = os.pipe()  # a keystroke wakes the typewriter's loop
        for fd in (self.master, self.slave):
            tty.setraw(fd)
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.device.boot()
        self._thread = threading.Thread(target=self._run, name="typewriter", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = self._wake_r = self._wake_w = -1

    def __enter__(self) -> SimulatedTypewriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the keyboard ----------------------------------------------------------------

    def press(self, code: int) -> None:
        """One key: the keystroke strikes the paper and goes to the host."""
        with self._lock:
            self.device.type_key(code)
            ch = {m.KEY_RETURN: "\n", m.KEY_BACKSPACE: "\b", m.KEY_TAB: " "}.get(code)
            if ch is None and 0x20 <= code <= 0x7E:
                ch = chr(code)
            if ch is not None:
                self._strike(ch)
        if self._wake_w >= 0:
            os.write(self._wake_w, b"k")

    def type_text(self, text: str, cps: Optional[float] = None) -> None:
        """Type text as a person would ("\\n" is return), at cps if given."""
        for ch in text:
            self.press(ord(ch) if ch != "\n" else m.KEY_RETURN)
            if cps:
                time.sleep(1.0 / cps)

    def _strike(self, ch: str) -> None:
        self.paper.strike(ch)
        self.on_strike(ch)

    # -- the print mechanism and the serial line ------------------------------------------

    def wait_printed(self, timeout: float) -> bool:
        """Wait until nothing is queued or being printed; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not len(self.device.print_queue) and self._striking is None:
                    return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            # Sleep until the mechanism's next strike is due (at most 50 ms) or bytes arrive.
            wait = 0.05 if self._striking is None else max(0.0, self._busy_until - time.monotonic())
            readable, _, _ = select.select([self.master, self._wake_r], [], [], min(wait, 0.05))
            if self._wake_r in readable:
                os.read(self._wake_r, 512)
            data = b""
            if self.master in readable:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # no host has the port open right now
                    time.sleep(0.01)
            with self._lock:
                if data:
                    queued = len(self.device.print_queue)
                    self.device.feed(data)
                    if self.record and len(self.device.print_queue) > queued:
                        self.received.append((time.monotonic(),
                                              len(self.device.print_queue) - queued))
                self._mechanism()
                out = self.device.output()
            if out:
                self._write(out)

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except OSError:
            pass  # nobody listening: the protocol retransmits what matters

    def _mechanism(self) -> None:
        """Strike print bytes, each once the previous one has had its time.

        Bells and unprintable bytes take no time, so the next byte follows at once.
        """
        now = time.monotonic()
        if self._striking is not None:
            if now < self._busy_until:
                return
            self.device.printed(self._striking)
            self._striking = None
        while True:
            byte = self.device.next_print_byte()
            if byte is None:
                return
            if byte == m.KEY_RETURN:
                self._busy_until = now + self.cr_seconds
                ch = "\n"
            elif 0x20 <= byte <= 0x7E:
                self._busy_until = now + 1.0 / self.cps
                ch = chr(byte)
            else:
                if byte == BELL:
                    self.bells += 1
                self.device.printed(byte)
                continue
            if self.record:
                self.struck.append((now, byte))
            self._strike(ch)
            self._striking = byte
            return


def read_terminal_keys(press: Callable[[int], None], stdin: TextIO = sys.stdin) -> None:
    """Feed the terminal's keys to a typewriter, one at a time, until Ctrl-C or Ctrl-D.

    The terminal goes to cbreak rather than raw mode: output processing stays on,
    so an echoed newline still returns the cursor. Other control bytes and
    non-ASCII (UTF-8) bytes are no typewriter key and are ignored. The settings
    are restored on exit.
    """
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setcbreak(fd)
            attrs = termios.tcgetattr(fd)
            attrs[0] &= ~(termios.ICRNL | termios.IXON)  # Return as CR, Ctrl-S as a key
            attrs[3] &= ~termios.ISIG  # Ctrl-C arrives as a byte: we quit cleanly
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        while True:
            data = os.read(fd, 64)
            if not data:
                return
            for byte in data:
                if byte in (0x03, 0x04):
                    return
                code = CONTROL_KEYS.get(byte)
                if code is None and 0x20 <= byte <= 0x7E:
                    code = byte
                if code is not None:
                    press(code)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def serve(width: int, cps: float, cr_seconds: float, script: Optional[str],
          out: TextIO = sys.stdout) -> int:
    """`typewriter simulate`: a typewriter for `typewriter run --port` to answer.

    Types the script (at a person's pace) or the terminal's keys, and echoes the
    paper to out as it is struck, until Ctrl-C (or Ctrl-D at the terminal).
    """

    def echo(ch: str) -> None:
        out.write(ch)
        out.flush()

    sim = SimulatedTypewriter(width=width, cps=cps, cr_seconds=cr_seconds, on_strike=echo)
    path = sim.start()
    print(f"Simulated typewriter on {path} — run: typewriter run --port {path}", file=out)
    print("Return twice sends. Ctrl-S submits, Ctrl-R resets, Ctrl-P reprints, "
          "Ctrl-N next persona, Ctrl-T speech, Ctrl-C quits.\n", file=out, flush=True)
    try:
        if script is not None:
            sim.type_text(script, cps=8.0)
            while True:
                time.sleep(1)
        else:
            read_terminal_keys(sim.press)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0
