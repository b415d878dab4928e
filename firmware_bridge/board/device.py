"""The firmware's side of the protocol, without hardware.

The keyboard scanner calls `type_key`, the print mechanism pulls bytes with
`next_print_byte` and reports each with `printed`; the UART moves the bytes
of `feed`/`output`. Runs unchanged on CPython and MicroPython: the RP2040
firmware and the simulated typewriter both run this class. No threads: the
firmware's main loop (or the simulator's one thread) calls everything.
"""

from firmware_bridge.board import messages as m
from firmware_bridge.board.framing import MAX_BODY
from firmware_bridge.board.session import Session

try:
    from typing import Callable, List, Optional
except ImportError:  # MicroPython parses annotations but never evaluates them
    pass

BELL = 0x07  # the one print byte besides printable ASCII and newline (m.KEY_RETURN)
STATUS_EVERY = 1.0  # liveness: the host declares the link down after 3 s of silence
# Changes closer together than this share one STATUS (a fast print mechanism
# would otherwise send one per character); flag changes are never delayed.
STATUS_COALESCE = 0.02


class Ring:
    """A fixed-size byte FIFO: no heap allocation per key or print byte, which
    keeps a microcontroller's heap from fragmenting over a long session."""

    def __init__(self, capacity: int) -> None:
        self.buf = bytearray(capacity)
        self.capacity = capacity
        self.head = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def free(self) -> int:
        return self.capacity - self.count

    def push(self, byte: int) -> bool:
        """Append one byte, or nothing (False) when full."""
        if not self.free():
            return False
        self.buf[(self.head + self.count) % self.capacity] = byte
        self.count += 1
        return True

    def extend(self, data: bytes) -> bool:
        """Append all of data, or nothing (False) when it does not fit."""
        if len(data) > self.free():
            return False
        tail = self.head + self.count
        for byte in data:
            self.buf[tail % self.capacity] = byte
            tail += 1
        self.count += len(data)
        return True

    def take(self, n: int) -> bytes:
        """Remove and return up to n bytes from the front."""
        n = min(n, self.count)
        out = bytearray(n)
        for i in range(n):
            out[i] = self.buf[(self.head + i) % self.capacity]
        self.head = (self.head + n) % self.capacity
        self.count -= n
        return bytes(out)

    def clear(self) -> None:
        self.head = self.count = 0


class Device:
    """Keys out (buffered while the host is away), print bytes in (within credits).

    Typed keys move `column` in `type_key` itself: the firmware strikes each
    key it hands over, so the carriage moves whether or not the host ever
    hears of the key (even when the buffer was full).
    """

    def __init__(self, name: str, boot_id: int, clock: "Callable[[], float]",
                 caps: int = m.CAP_KEYBOARD | m.CAP_PRINTER | m.CAP_BELL,
                 key_capacity: int = 512, print_capacity: int = 512) -> None:
        self.clock = clock
        self.session = Session(caps, name, boot_id, clock, on_reliable=self._reliable,
                               credits=self.credits)
        self.keys = Ring(key_capacity)
        self.print_queue = Ring(print_capacity)
        self.busy = False  # a byte is being printed
        self.overflowed = False  # sticky since boot: the host must learn keys were lost
        self.column = 0
        self.printed_count = 0
        self._status = None  # the last STATUS sent: (flags, column, credits, printed)
        self._status_at = -STATUS_EVERY

    def boot(self) -> None:
        """Say HELLO: the host learns this boot_id and forgets our old sequence. The
        session repeats it every second until the host greets back."""
        self.session.hello()

    def credits(self) -> int:
        """Free room in the print queue: what ACK and STATUS advertise."""
        return self.print_queue.free()

    def flags(self) -> int:
        """STATUS flags. Never FLAG_PAPER_OUT: no typewriter model has a paper sensor
        (typewriters/*.json; most typewriters have none to tap), and a flag nothing sets
        would only pretend one. A model that gains one adds a pin and sets it here."""
        flags = m.FLAG_OVERFLOW if self.overflowed else 0
        if self.busy or len(self.print_queue):
            flags |= m.FLAG_PRINTING
        return flags

    # -- keyboard --------------------------------------------------------------------

    def type_key(self, code: int) -> None:
        """A key the person typed: buffered until the host has it; the carriage moves.

        Tab moves one column, as the simulated paper strikes it as a space.
        """
        if not self.keys.push(code):
            self.overflowed = True
        if code == m.KEY_RETURN:
            self.column = 0
        elif code == m.KEY_BACKSPACE:
            self.column = max(0, self.column - 1)
        elif 0x20 <= code <= 0x7E or code == m.KEY_TAB:
            self.column += 1

    # -- print mechanism -------------------------------------------------------------

    def next_print_byte(self) -> "Optional[int]":
        """The next byte to print, or None; the mechanism calls printed() when done."""
        if not len(self.print_queue):
            return None
        self.busy = True
        return self.print_queue.take(1)[0]

    def printed(self, byte: int) -> None:
        """The mechanism finished a byte. Newline and bell count as printed too, so
        the counter matches the bytes a host sent (it sends no others)."""
        self.busy = False
        if byte == m.KEY_RETURN:
            self.column = 0
        elif 0x20 <= byte <= 0x7E:
            self.column += 1
        elif byte != BELL:
            return  # not printable: the spec says print nothing for it
        self.printed_count = (self.printed_count + 1) & 0xFFFFFFFF

    # -- link ------------------------------------------------------------------------

    def _reliable(self, ftype: int, seq: int, body: bytes) -> bool:
        if ftype == m.PRINT:
            return self.print_queue.extend(body)  # no room: no ACK, the host retries
        if ftype == m.CANCEL:
            self.print_queue.clear()
        return True

    def feed(self, data: bytes) -> "List[tuple]":
        """Bytes from the host. Returns the session's events (hello, ack, ...).

        A host that says HELLO (it just opened the port, perhaps after a
        restart) gets a STATUS before any key, so it knows what is on paper
        before it acts on what was typed while it was away.
        """
        events = self.session.feed(data)
        for event in events:
            if event.kind == "hello":
                self._status = None
        return events

    def output(self) -> bytes:
        """Bytes for the host: keys in batches, STATUS when something changed."""
        now = self.clock()
        status = (self.flags(), self.column, self.credits(), self.printed_count)
        due = now - self._status_at >= STATUS_EVERY
        changed = status != self._status and (
            self._status is None or status[0] != self._status[0]
            or now - self._status_at >= STATUS_COALESCE
        )
        if due or changed:
            self._status = status
            self._status_at = now
            self.session.send_unreliable(m.STATUS, m.pack_status(*status))
        # Keys wait until a host has answered since boot: one that restored an old boot_id
        # must see our HELLO or WELCOME before a KEY whose seq could look like a duplicate
        # (and the host refuses reliable frames from a board that has not greeted it).
        greeted = self.session.greeted and self.session.peer_boot_id is not None
        if greeted and len(self.keys) and not self.session.pending:
            self.session.send(m.KEY, self.keys.take(MAX_BODY))
        return self.session.output()
