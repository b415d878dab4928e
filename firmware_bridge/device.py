"""The firmware's side of the protocol, without hardware.

The keyboard scanner calls `type_key`, the print mechanism pulls bytes with
`next_print_byte` and reports each with `printed`; the UART moves the bytes
of `feed`/`output`. Runs unchanged on CPython and MicroPython: the RP2040
firmware and the simulated typewriter both run this class.
"""

from firmware_bridge import messages as m
from firmware_bridge.framing import MAX_BODY
from firmware_bridge.session import Session

STATUS_EVERY = 1.0
# Changes closer together than this share one STATUS (a fast print mechanism
# would otherwise send one per character); flag changes are never delayed.
STATUS_COALESCE = 0.02


class Device:
    """Keys out (buffered while the host is away), print bytes in (within credits)."""

    def __init__(self, name, boot_id, clock, caps=m.CAP_KEYBOARD | m.CAP_PRINTER | m.CAP_BELL,
                 key_capacity=512, print_capacity=512):
        self.clock = clock
        self.key_capacity = key_capacity
        self.print_capacity = print_capacity
        self.session = Session(caps, name, boot_id, clock, on_reliable=self._reliable,
                               credits=self.credits)
        self.keys = bytearray()
        self.print_queue = bytearray()
        self.busy = False  # a byte is being printed
        self.overflowed = False
        self.paper_out = False
        self.column = 0
        self.printed_count = 0
        self._status = None
        self._status_at = -STATUS_EVERY

    def boot(self):
        """Say HELLO: the host learns this boot_id and resets its view of our sequence."""
        self.session.hello()

    def credits(self):
        return self.print_capacity - len(self.print_queue)

    def flags(self):
        flags = m.FLAG_OVERFLOW if self.overflowed else 0
        if self.busy or self.print_queue:
            flags |= m.FLAG_PRINTING
        if self.paper_out:
            flags |= m.FLAG_PAPER_OUT
        return flags

    # -- keyboard --------------------------------------------------------------------

    def type_key(self, code):
        """A key the person typed: buffered until the host has it. The keystroke
        itself already struck the paper, so the carriage moves."""
        if len(self.keys) >= self.key_capacity:
            self.overflowed = True
            return
        self.keys.append(code)
        if code == m.KEY_RETURN:
            self.column = 0
        elif code == m.KEY_BACKSPACE:
            self.column = max(0, self.column - 1)
        elif 0x20 <= code <= 0x7E or code == m.KEY_TAB:
            self.column += 1

    # -- print mechanism -------------------------------------------------------------

    def next_print_byte(self):
        """The next byte to print, or None; the mechanism calls printed() when done."""
        if not self.print_queue:
            return None
        byte = self.print_queue[0]
        self.print_queue = self.print_queue[1:]
        self.busy = True
        return byte

    def printed(self, byte):
        self.busy = False
        if byte == m.PRINT_NEWLINE:
            self.column = 0
        elif 0x20 <= byte <= 0x7E:
            self.column += 1
        else:
            return
        self.printed_count = (self.printed_count + 1) & 0xFFFFFFFF

    # -- link ------------------------------------------------------------------------

    def _reliable(self, ftype, body):
        if ftype == m.PRINT:
            if len(body) > self.credits():
                return False
            self.print_queue += body
        elif ftype == m.CANCEL:
            self.print_queue = bytearray()
        return True

    def feed(self, data):
        """Bytes from the host. Returns the session's events (hello, ack, ...)."""
        return self.session.feed(data)

    def output(self):
        """Bytes for the host: keys in batches, STATUS when something changed."""
        if self.keys and not self.session.pending:
            batch = bytes(self.keys[:MAX_BODY])
            self.keys = self.keys[MAX_BODY:]
            self.session.send(m.KEY, batch)
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
        return self.session.output()
