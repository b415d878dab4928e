"""Print injection: typing on the typewriter's logic board as if keys were pressed.

For each byte the injector closes the crosspoints of its key (and Shift, or
Code, first), holds them for the calibrated time, releases them, and waits
what the mechanism needs for that byte before the next. Runs unchanged on
CPython and MicroPython; time is whatever `now` the caller passes.
"""

from firmware_bridge.board import messages as m
from firmware_bridge.board.device import BELL, Ring

try:
    from typing import Optional
except ImportError:  # MicroPython: annotations are never evaluated
    pass

IDLE = 0
HOLDING = 1  # crosspoints closed
SETTLING = 2  # released; the mechanism is striking


class Injector:
    """Strikes the host's print bytes and echoes the person's keys, one at a time.

    Echoes (keys typed on the keyboard, which reaches the logic board only
    through us) go before print bytes; only print bytes are counted with
    device.printed(), and none is ever reported as a key: the crosspoints sit
    on the logic board's side of the cut keyboard cable, where the keyboard
    scan cannot see them. `switch` has close(position), open(position), bell().
    """

    def __init__(self, switch: "object", keymap: "object", timing: "object",
                 echo_capacity: int = 512) -> None:
        self.switch = switch
        self.keymap = keymap
        self.timing = timing
        self.echo = Ring(echo_capacity)
        self.phase = IDLE
        self.until = 0.0
        self.byte = 0
        self.from_host = False
        self.closed = ()
        self.column = 0  # where this injector has put the carriage

    @property
    def printing(self) -> bool:
        """A print byte from the host is being struck."""
        return self.phase != IDLE and self.from_host

    def poll(self, now: float, device: "object") -> "Optional[float]":
        """Advance; returns when to be called next (None: when there is work)."""
        while True:
            if self.phase == HOLDING:
                if now < self.until:
                    return self.until
                for position in self.closed:
                    self.switch.open(position)
                self.closed = ()
                self.phase = SETTLING
                self.until = now + self.timing.release + self._wait(self.byte)
                self._move(self.byte)
            if self.phase == SETTLING:
                if now < self.until:
                    return self.until
                self.phase = IDLE
                if self.from_host:
                    device.printed(self.byte)
            if len(self.echo):
                self.byte, self.from_host = self.echo.take(1)[0], False
            else:
                byte = device.next_print_byte()
                if byte is None:
                    return None
                self.byte, self.from_host = byte, True
            if not self._strike(now) and self.from_host:
                device.printed(self.byte)  # nothing to strike (bell, unknown): counted, as sent

    def _strike(self, now: float) -> bool:
        if self.byte == BELL:
            self.switch.bell()
            return False
        positions = self.keymap.strokes(self.byte)
        if not positions:
            return False
        for position in positions:
            self.switch.close(position)
        self.closed = positions
        self.phase = HOLDING
        self.until = now + self.timing.hold
        return True

    def _wait(self, byte: int) -> float:
        """What the mechanism needs after the key is released, before the next one."""
        if byte == m.KEY_RETURN:
            return self.timing.cr + self.timing.cr_per_column * self.column + self.timing.lf
        return self.timing.char

    def _move(self, byte: int) -> None:
        if byte == m.KEY_RETURN:
            self.column = 0
        elif byte == m.KEY_BACKSPACE:
            self.column = max(0, self.column - 1)
        elif 0x20 <= byte <= 0x7E or byte == m.KEY_TAB:
            self.column += 1
