"""Keyboard matrix scan with per-key eager debounce.

Runs unchanged on CPython and MicroPython. A frame is what one scan of the
matrix read: for each column, a bitmask of the rows whose key is closed.
"""

try:
    from typing import List, Sequence, Tuple
except ImportError:  # MicroPython: annotations are never evaluated
    pass


class Debouncer:
    """Eager debounce: a key's first change is reported at once, then that key is
    ignored for press_s (after a press) or release_s (after a release).

    Eager rather than integrating: the keystroke reaches the host without
    waiting out the bounce, and contacts that chatter for tens of ms after the
    first touch (as typewriter key switches do) still give one key. Each key
    has its own lock, so fast typing across keys is never slowed.
    """

    def __init__(self, columns: int, rows: int, press_s: float, release_s: float) -> None:
        self.columns = columns
        self.rows = rows
        self.press_s = press_s
        self.release_s = release_s
        self.state = [0] * columns  # debounced rows per column
        self.until = [0.0] * (columns * rows)  # per key: changes ignored until then

    def update(self, frame: "Sequence[int]", now: float) -> "List[Tuple[int, bool]]":
        """The debounced changes in this frame: (position, pressed), in scan order."""
        events = []
        for col in range(self.columns):
            changed = frame[col] ^ self.state[col]
            if not changed:
                continue
            for row in range(self.rows):
                bit = 1 << row
                if not changed & bit:
                    continue
                index = col * self.rows + row
                if now < self.until[index]:
                    continue
                self.state[col] ^= bit
                pressed = bool(self.state[col] & bit)
                self.until[index] = now + (self.press_s if pressed else self.release_s)
                events.append((index, pressed))
        return events
