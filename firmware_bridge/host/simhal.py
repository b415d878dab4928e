"""The simulated hardware: the HAL surface of `board/hal.py` without a board.

A keyboard pressed by a simulated finger and a logic board that reads the
crosspoints the way the typewriter would. It lives on the host side, so what
`firmware flash` copies to the Pico is the board's folder and nothing else.
"""

from firmware_bridge.board.keymap import Keymap
from firmware_bridge.board.model import Timing

try:
    from typing import Callable, Dict, List, Optional, Tuple
except ImportError:  # MicroPython runs it too, in the firmware check
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
