"""The hardware layer: the only firmware module that touches `machine`.

`PicoHal` is the real board (a Raspberry Pi Pico wired as docs/hardware.md
shows): it scans the keyboard, which is cut over from the logic board to the
Pico, and closes crosspoints of an MT8816 switch on the logic board's side of
the cable to type. `SimHal` is the same surface without hardware: a keyboard
pressed by a simulated finger and a logic board that reads the crosspoints
the way the typewriter would. Everything above this layer runs on both.

A HAL has scan(now) -> frame, close(position), open(position), bell(), has_bell.
PicoHal adds the UART (read, write), now() and boot_id().
"""

from firmware_bridge.keymap import Keymap
from firmware_bridge.model import Timing

try:
    from typing import Callable, Dict, List, Optional, Tuple
except ImportError:  # MicroPython: annotations are never evaluated
    pass

IDLE = 0
DOWN = 1
UP = 2


class SimKeyboard:
    """A keyboard matrix and the finger typing on it.

    Each stroke (the positions of one key and its modifiers) goes down, stays
    down until a scan at least press_s after the first scan that saw it, then
    comes up for as long after: as fast as the debounce lets a person type,
    whatever the scan rate, so no stroke is ever missed or merged. `close` and
    `open` set single contacts directly (bouncing contacts, in tests).
    """

    def __init__(self, columns: int, rows: int, press_s: float, release_s: float) -> None:
        self.rows = rows
        self.press_s = press_s
        self.release_s = release_s
        self.frame = [0] * columns
        self.strokes = []
        self.phase = IDLE
        self.current = ()
        self.seen = None

    def type(self, positions: "Tuple[int, ...]") -> None:
        self.strokes.append(positions)

    @property
    def typing(self) -> bool:
        return self.phase != IDLE or bool(self.strokes)

    def close(self, position: int) -> None:
        col, row = divmod(position, self.rows)
        self.frame[col] |= 1 << row

    def open(self, position: int) -> None:
        col, row = divmod(position, self.rows)
        self.frame[col] &= ~(1 << row)

    def scan(self, now: float) -> "List[int]":
        if self.phase == DOWN and self.seen is not None and now >= self.seen + self.press_s:
            for position in self.current:
                self.open(position)
            self.phase, self.seen = UP, None
        elif self.phase == UP and self.seen is not None and now >= self.seen + self.release_s:
            self.phase, self.seen = IDLE, None
        if self.phase == IDLE and self.strokes:
            self.current = self.strokes.pop(0)
            for position in self.current:
                self.close(position)
            self.phase = DOWN
        if self.phase != IDLE and self.seen is None:
            self.seen = now
        return list(self.frame)


class SimLogicBoard:
    """The typewriter's own electronics: reads closed crosspoints as its keyboard.

    It has its own Shift and Code state, like the real board, and strikes the
    code a key closed with them gives (on_strike(code)).
    """

    def __init__(self, model: "Dict", on_strike: "Callable[[int], None]") -> None:
        self.keymap = Keymap(model)
        self.on_strike = on_strike
        self.closed = set()

    def close(self, position: int) -> None:
        if position in self.closed:
            return
        self.closed.add(position)
        code = self.keymap.event(position, True)
        if code is not None:
            self.on_strike(code)

    def open(self, position: int) -> None:
        if position in self.closed:
            self.closed.discard(position)
            self.keymap.event(position, False)


class SimHal:
    """A simulated board: keyboard, crosspoint switch to a simulated logic board, bell."""

    has_bell = True

    def __init__(self, model: "Dict", on_strike: "Callable[[int], None]",
                 on_bell: "Optional[Callable[[], None]]" = None) -> None:
        timing = Timing(model["timing_ms"])
        matrix = model["matrix"]
        self.keyboard = SimKeyboard(matrix["columns"], matrix["rows"], timing.debounce_press,
                                    timing.debounce_release)
        self.board = SimLogicBoard(model, on_strike)
        self.on_bell = on_bell or (lambda: None)

    def scan(self, now: float) -> "List[int]":
        return self.keyboard.scan(now)

    def close(self, position: int) -> None:
        self.board.close(position)

    def open(self, position: int) -> None:
        self.board.open(position)

    def bell(self) -> None:
        self.on_bell()


class PicoHal:
    """A Raspberry Pi Pico: keyboard columns driven low one at a time, rows read with
    pull-ups; an MT8816 crosspoint switch addressed by AX/AY, latched by STROBE."""

    def __init__(self, model: "Dict") -> None:
        import time

        from machine import UART, Pin

        self.time = time
        self.Pin = Pin
        pins = model["pico"]
        self.nrows = model["matrix"]["rows"]
        self.columns = [Pin(p, Pin.IN) for p in pins["columns"]]  # undriven until scanned
        self.rows = [Pin(p, Pin.IN, Pin.PULL_UP) for p in pins["rows"]]
        u = pins["uart"]
        self.uart = UART(u["id"], baudrate=u["baud"], tx=Pin(u["tx"]), rx=Pin(u["rx"]),
                         rxbuf=2048, txbuf=1024)
        mt = pins["mt8816"]
        self.ax = [Pin(p, Pin.OUT, value=0) for p in mt["ax"]]
        self.ay = [Pin(p, Pin.OUT, value=0) for p in mt["ay"]]
        self.data = Pin(mt["data"], Pin.OUT, value=0)
        self.strobe = Pin(mt["strobe"], Pin.OUT, value=0)
        self.x_address = mt["x_address"]
        self.y_address = mt["y_address"]
        self.bell_pin = Pin(pins["bell"], Pin.OUT, value=0) if pins.get("bell") is not None \
            else None
        self.has_bell = self.bell_pin is not None
        self._ticks = time.ticks_ms()
        self._ms = 0
        for position in range(len(self.columns) * self.nrows):
            self.open(position)  # the switch's latches power up in no known state

    def now(self) -> float:
        """Seconds since boot, from wrapping ticks."""
        t = self.time.ticks_ms()
        self._ms += self.time.ticks_diff(t, self._ticks)
        self._ticks = t
        return self._ms / 1000

    def boot_id(self) -> int:
        import os

        return int.from_bytes(os.urandom(4), "big")  # the RP2040's ring-oscillator bits

    def scan(self, now: float) -> "List[int]":
        frame = []
        for col in self.columns:
            col.init(self.Pin.OUT, value=0)
            self.time.sleep_us(3)  # let the line settle through the keyboard's film traces
            bits = 0
            for row, pin in enumerate(self.rows):
                if not pin.value():
                    bits |= 1 << row
            col.init(self.Pin.IN)
            frame.append(bits)
        return frame

    def _latch(self, position: int, on: int) -> None:
        col, row = divmod(position, self.nrows)
        x, y = self.x_address[col], self.y_address[row]
        for bit, pin in enumerate(self.ax):
            pin.value((x >> bit) & 1)
        for bit, pin in enumerate(self.ay):
            pin.value((y >> bit) & 1)
        self.data.value(on)
        self.strobe.value(1)
        self.time.sleep_us(1)
        self.strobe.value(0)

    def close(self, position: int) -> None:
        self._latch(position, 1)

    def open(self, position: int) -> None:
        self._latch(position, 0)

    def bell(self) -> None:
        if self.bell_pin is not None:
            self.bell_pin.value(1)
            self.time.sleep_ms(30)
            self.bell_pin.value(0)

    def read(self) -> bytes:
        n = self.uart.any()
        return self.uart.read(n) if n else b""

    def write(self, data: bytes) -> None:
        self.uart.write(data)
