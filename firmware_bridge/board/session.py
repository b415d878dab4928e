"""One end of the link, without I/O: reliability, handshake and peer tracking.

The caller moves bytes: `feed()` what the port received, write what `output()`
returns. Runs unchanged on CPython and MicroPython (the clock is injected).
"""

from collections import namedtuple

from firmware_bridge.board import messages as m
from firmware_bridge.board.framing import Decoder, encode_frame

try:
    from typing import Callable, List, Optional
except ImportError:  # MicroPython: annotations are never evaluated
    pass


# What feed() returns, one record per kind; `kind` first, so each still compares equal to
# the plain tuple ("ack", seq, credits) and unpacks the same way.
Greeting = namedtuple("Greeting", ("kind", "version", "caps", "boot_id", "name"))  # hello/welcome
Restarted = namedtuple("Restarted", ("kind", "boot_id"))
Ack = namedtuple("Ack", ("kind", "seq", "credits"))
Status = namedtuple("Status", ("kind", "flags", "column", "credits", "printed"))


class Session:
    """Stop-and-wait reliable frames one way, duplicate-free delivery the other.

    on_reliable(ftype, seq, body) -> bool is called once per new reliable frame;
    returning False refuses it (no ACK: the peer retransmits later), which is
    how a full print buffer or a failed durable write pushes back.
    """

    def __init__(self, caps: int, name: str, boot_id: int, clock: "Callable[[], float]",
                 on_reliable: "Optional[Callable[[int, int, bytes], bool]]" = None,
                 credits: "Optional[Callable[[], int]]" = None,
                 retry_initial: float = 0.1, retry_max: float = 1.0,
                 hello_every: float = 1.0, version: int = m.VERSION) -> None:
        self.caps = caps
        self.name = name
        self.version = version  # what our HELLO and WELCOME say (tests simulate others)
        self.boot_id = boot_id & 0xFFFFFFFF
        self.clock = clock
        self.on_reliable = on_reliable or (lambda ftype, seq, body: True)
        self.credits = credits or (lambda: 0)
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.hello_every = hello_every
        self.decoder = Decoder(m.KNOWN_TYPES)
        self.out = bytearray()
        self.queue = []  # (ftype, body) waiting behind the frame in flight
        self.in_flight = None  # (seq, wire bytes) until its ACK
        self.next_seq = 0
        self.retry_at = 0.0
        self.retry_delay = retry_initial
        self.peer_boot_id = None
        self.peer_credits = None
        self.peer_version = None  # version and caps of the last HELLO/WELCOME heard
        self.peer_caps = None
        self.last_seq = None
        self.last_heard = None
        # Whether last_seq may be trusted: False from hello() or restore() until the peer
        # greets (HELLO or WELCOME), which says which boot its next reliable frame is from.
        self.greeted = True
        self.hello_at = None  # when to say HELLO again while not greeted

    # -- sending -------------------------------------------------------------------

    def hello(self) -> None:
        """Announce this end (host: on open; firmware: on boot); the peer answers WELCOME.

        Until the peer greets back, reliable frames are refused (not acknowledged) and
        the HELLO repeats every hello_every seconds (docs/protocol-notes.md, rule 1).
        """
        self.greeted = False
        self._say_hello()

    def _say_hello(self) -> None:
        self.out += encode_frame(m.HELLO, 0, self._greeting())
        self.hello_at = self.clock() + self.hello_every

    def send(self, ftype: int, body: bytes) -> None:
        """Queue a reliable frame; frames go out one at a time, in order."""
        self.queue.append((ftype, bytes(body)))
        self._next()

    def send_unreliable(self, ftype: int, body: bytes) -> None:
        """Send once with seq 0, e.g. STATUS: a lost one is replaced by the next."""
        self.out += encode_frame(ftype, 0, body)

    def drop_queued(self, ftype: int) -> None:
        """Forget queued frames of one type (the frame in flight still completes)."""
        self.queue = [q for q in self.queue if q[0] != ftype]

    @property
    def pending(self) -> int:
        """Reliable frames not yet acknowledged (queued + in flight)."""
        return len(self.queue) + (1 if self.in_flight is not None else 0)

    def _next(self) -> None:
        if self.in_flight is not None or not self.queue:
            return
        ftype, body = self.queue.pop(0)
        seq = self.next_seq
        self.next_seq = (seq + 1) & 0xFF
        self.in_flight = (seq, encode_frame(ftype, seq, body))
        self.out += self.in_flight[1]
        self.retry_delay = self.retry_initial
        self.retry_at = self.clock() + self.retry_delay

    def output(self) -> bytes:
        """The bytes to write now, retransmitting the frame in flight when due, and
        HELLO while the peer has not greeted since hello()."""
        if not self.greeted and self.hello_at is not None and self.clock() >= self.hello_at:
            self._say_hello()
        if self.in_flight is not None and self.clock() >= self.retry_at:
            self.out += self.in_flight[1]
            self.retry_delay = min(self.retry_delay * 2, self.retry_max)
            self.retry_at = self.clock() + self.retry_delay
        data = bytes(self.out)
        self.out = bytearray()
        return data

    # -- receiving -----------------------------------------------------------------

    def restore(self, peer_boot_id: "Optional[int]", last_seq: "Optional[int]") -> None:
        """Resume duplicate detection after this end restarted (host: from storage).

        The restored seq counts only once the peer has greeted with that boot_id: until
        then reliable frames are refused, as a new boot's first seq may equal it.
        """
        self.peer_boot_id = peer_boot_id
        self.last_seq = last_seq
        self.greeted = False

    def feed(self, data: bytes) -> "List[tuple]":
        """Handle received bytes; returns the events for the caller, in order."""
        events = []
        for ftype, seq, body in self.decoder.feed(data):
            try:
                self._frame(ftype, seq, body, events)
            except _BadBody:
                self.decoder.dropped += 1
                continue
            self.last_heard = self.clock()
        return events

    def _frame(self, ftype: int, seq: int, body: bytes, events: "List[tuple]") -> None:
        if ftype in (m.HELLO, m.WELCOME):
            version, caps, boot_id, name = _unpack(m.unpack_hello, body)
            if self.peer_boot_id is not None and boot_id != self.peer_boot_id:
                self.last_seq = None
                events.append(Restarted("restarted", boot_id))
            self.peer_boot_id = boot_id
            self.peer_version, self.peer_caps = version, caps
            self.greeted = True
            if ftype == m.HELLO:
                self.out += encode_frame(m.WELCOME, 0, self._greeting())
                events.append(Greeting("hello", version, caps, boot_id, name))
            else:
                events.append(Greeting("welcome", version, caps, boot_id, name))
        elif ftype == m.ACK:
            credits = _unpack(m.unpack_ack, body)
            self.peer_credits = credits
            if self.in_flight is not None and seq == self.in_flight[0]:
                self.in_flight = None
                self._next()
            events.append(Ack("ack", seq, credits))
        elif ftype == m.STATUS:
            status = _unpack(m.unpack_status, body)
            self.peer_credits = status[2]
            events.append(Status("status", *status))
        elif ftype in m.RELIABLE:
            if not self.greeted:
                return  # from which boot? No ACK: the peer retransmits after our HELLO
            if seq == self.last_seq:
                self._ack(seq)
            elif self.on_reliable(ftype, seq, body):
                self.last_seq = seq
                self._ack(seq)

    def _greeting(self) -> bytes:
        return m.pack_hello(self.caps, self.boot_id, self.name, self.version)

    def _ack(self, seq: int) -> None:
        self.out += encode_frame(m.ACK, seq, m.pack_ack(self.credits()))


class _BadBody(Exception):
    """A CRC-valid frame whose body is too short for its type: dropped like a bad frame."""


def _unpack(unpacker: "Callable", body: bytes) -> "tuple":
    """Only the body's own faults become _BadBody, so a caller's bug is never swallowed."""
    try:
        return unpacker(body)
    except ValueError as e:
        raise _BadBody(str(e)) from None
