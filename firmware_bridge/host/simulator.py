"""A simulated typewriter on a pseudo-terminal.

The firmware itself (`firmware_bridge.board.firmware`) runs on one side of a pty,
on a simulated board; the host opens the other side with pyserial like any
serial port. Keys typed on the simulated keyboard are scanned, reported to the
host and echoed onto the paper; print bytes from the host strike the paper at
the mechanism's pace; keys typed while a reply prints wait until it is done.
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

from firmware_bridge.board import messages as m
from firmware_bridge.board import model as models
from firmware_bridge.board.firmware import Firmware
from firmware_bridge.host.simhal import SimHal

SCAN_EVERY = 0.001  # while the finger is on the keys

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
    """A typewriter with keyboard and print mechanism, behind a pty.

    Inside is the firmware itself (`Firmware`: scan, keymap, Device, injector)
    on a simulated board (`SimHal`); only the keyboard's finger, the logic
    board and the paper are simulated. The model's timings are replaced by
    the simulator's: a person's keystroke is down for `debounce[0]` and up for
    `debounce[1]`, and each character takes 1/cps, a return cr_seconds.
    """

    def __init__(self, width: int = 65, cps: float = 12.0, cr_seconds: float = 0.5,
                 name: str = "simulated typewriter", boot_id: Optional[int] = None,
                 on_strike: Optional[Callable[[str], None]] = None, record: bool = False,
                 model: str = "brother_ax", debounce: Tuple[float, float] = (0.002, 0.001)):
        self.paper = Paper(width)
        self.cr_seconds = cr_seconds
        self.on_strike = on_strike or (lambda ch: None)
        self.bells = 0
        # With record on, (time, bytes) of every PRINT body accepted and (time, byte)
        # of every printed byte, for benchmarks measuring what reaches the paper when.
        self.record = record
        self.received: List[Tuple[float, int]] = []
        self.struck: List[Tuple[float, int]] = []
        spec = models.load(model)
        spec["timing_ms"] = dict(spec["timing_ms"], hold=0, release=0, char=1000.0 / cps,
                                 cr=cr_seconds * 1000, cr_per_column=0, lf=0,
                                 debounce_press=debounce[0] * 1000,
                                 debounce_release=debounce[1] * 1000)
        self.hal = SimHal(spec, self._struck, self._bell)
        self.firmware = Firmware(spec, self.hal, time.monotonic,
                                 boot_id if boot_id is not None else random.getrandbits(32),
                                 name=name)
        self.device = self.firmware.device
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.master = self.slave = self._wake_r = self._wake_w = -1
        self.path = ""

    @property
    def cps(self) -> float:
        """Print speed; may be changed while the typewriter runs."""
        return 1.0 / self.firmware.timing.char

    @cps.setter
    def cps(self, cps: float) -> None:
        self.firmware.timing.char = 1.0 / cps

    def start(self) -> str:
        """Open the pty and start the typewriter; returns the device path for the host."""
        self.master, self.slave = os.openpty()
        self._wake_r, self._wake_w = os.pipe()  # a keystroke wakes the typewriter's loop
        for fd in (self.master, self.slave):
            tty.setraw(fd)
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.firmware.boot()
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
        """One key (with its Shift or Code) pressed on the keyboard; codes the
        typewriter has no key for are ignored."""
        strokes = self.firmware.keymap.strokes(code)
        if not strokes:
            return
        with self._lock:
            self.hal.keyboard.type(strokes)
        if self._wake_w >= 0:
            os.write(self._wake_w, b"k")

    def type_text(self, text: str, cps: Optional[float] = None) -> None:
        """Type text as a person would ("\\n" is return), at cps if given."""
        for ch in text:
            self.press(ord(ch) if ch != "\n" else m.KEY_RETURN)
            if cps:
                time.sleep(1.0 / cps)

    def _struck(self, code: int) -> None:
        """The logic board struck a key, typed or printed."""
        ch = {m.KEY_RETURN: "\n", m.KEY_BACKSPACE: "\b", m.KEY_TAB: " "}.get(code)
        if ch is None and 0x20 <= code <= 0x7E:
            ch = chr(code)
        if ch is None:
            return
        if self.record and self.firmware.injector.from_host:
            self.struck.append((time.monotonic(), code))
        self.paper.strike(ch)
        self.on_strike(ch)

    def _bell(self) -> None:
        self.bells += 1

    # -- the firmware's loop and the serial line -------------------------------------------

    def wait_printed(self, timeout: float) -> bool:
        """Wait until nothing is queued, held or being struck; False on timeout."""
        fw = self.firmware
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not (fw.printing or fw.injector.phase or len(fw.injector.echo)
                        or len(fw.held)):
                    return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.is_set():
            readable, _, _ = select.select([self.master, self._wake_r], [], [], wait)
            if self._wake_r in readable:
                os.read(self._wake_r, 512)
            data = b""
            if self.master in readable:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # no host has the port open right now
                    time.sleep(0.01)
            with self._lock:
                now = time.monotonic()
                if data:
                    queued = len(self.device.print_queue)
                    self.device.feed(data)
                    if self.record and len(self.device.print_queue) > queued:
                        self.received.append((now, len(self.device.print_queue) - queued))
                wake = self.firmware.poll(now)
                out = self.device.output()
                typing = self.hal.keyboard.typing
            if out:
                self._write(out)
            # Sleep until the next strike is due, a scan is needed or bytes arrive (<= 50 ms).
            wait = SCAN_EVERY if typing else 0.05
            if wake is not None:
                wait = min(wait, max(0.0, wake - now))

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except OSError:
            pass  # nobody listening: the protocol retransmits what matters


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
        if saved is not None:  # cbreak, in one change so no key meets a half-set terminal
            attrs = termios.tcgetattr(fd)
            attrs[0] &= ~(termios.ICRNL | termios.IXON)  # Return as CR, Ctrl-S as a key
            # Ctrl-C arrives as a byte (we quit cleanly); no echo, no line editing.
            attrs[3] &= ~(termios.ISIG | termios.ECHO | termios.ICANON)
            attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 1, 0
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
