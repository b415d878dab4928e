"""The host end of the serial link: keys in, print text out.

A `Link` owns the serial port and one background thread. It handshakes,
delivers the firmware's keys in order exactly once (acknowledged only once the
caller has kept them), sends print text only as
the firmware's credits allow, and when it hears nothing valid for three seconds
it treats the link as down, reopens the port (the board may have been replugged)
and says HELLO again.

It checks the peer (docs/protocol-notes.md, rule 2): a firmware speaking another
protocol version is refused (`refused` says why and what to do; the link stays
down, no key is taken from it); without the printer cap print text is dropped, and
without the bell cap BELL bytes are stripped from it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from typing import Callable, Optional

import serial

from appliance.errors import UserError
from firmware_bridge.board import messages as m
from firmware_bridge.board.framing import MAX_BODY
from firmware_bridge.board.session import Greeting, Restarted, Session, Status

log = logging.getLogger(__name__)

DEAD_AFTER = 3.0
REOPEN_EVERY = 1.0
READ_WAIT = 0.05  # wait while a frame awaits its ACK: retransmission is due in 100 ms
# Wait with nothing to send: bytes, print_text and cancel wake the loop anyway, and
# liveness needs only a look a few times in its 3 s. Fewer wake-ups leave the cores
# to the model, which shares them while a reply is generated.
IDLE_WAIT = 0.25
HOST_CAPS = 0
BELL = 0x07
FLASH_COMMAND = "typewriter firmware flash"


def refusal(version: int) -> str:
    """Why a firmware speaking `version` is refused, and the fix."""
    said = f"the typewriter speaks protocol {version}, this appliance {m.VERSION}: "
    if version < m.VERSION:
        return said + f"update its firmware with {FLASH_COMMAND}"
    return said + ("update the appliance, or put this appliance's firmware on it with "
                   + FLASH_COMMAND)


class LinkError(UserError):
    """The serial port cannot be used; the message names the fix."""


def open_port(port: str) -> serial.Serial:
    """Open a serial device (or pyserial URL) at the protocol's settings, or say why not."""
    if not port.startswith(("socket://", "loop://", "rfc2217://")) and not os.path.exists(port):
        raise LinkError(
            f"serial port {port} does not exist: check the cable, or pass the path "
            "`typewriter simulate` printed (--port)"
        )
    try:
        return serial.serial_for_url(port, baudrate=115200, timeout=READ_WAIT, write_timeout=1.0)
    except (serial.SerialException, OSError) as e:
        raise LinkError(f"cannot open serial port {port}: {e}") from e


class Link:
    """One typewriter on one serial port."""

    def __init__(
        self,
        port: str,
        on_keys: Callable[[int, int, bytes], bool],
        on_change: Optional[Callable[[str], None]] = None,
        name: str = "typewriter-host",
        boot_id: Optional[int] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.port = port
        self.on_keys = on_keys
        self.on_change = on_change or (lambda what: None)
        self.clock = clock
        self.session = Session(
            HOST_CAPS,
            name,
            boot_id if boot_id is not None else random.getrandbits(32),
            clock,
            on_reliable=self._reliable,
        )
        self.up = False
        self.refused: Optional[str] = None  # why the firmware is refused (None: it is not)
        self.peer_name = ""
        self.peer_caps: Optional[int] = None
        self.print_dropped = 0  # print bytes dropped: the typewriter has no printer
        self._told_no_printer = False
        self.overflow = False
        self.column = 0
        self.printed = 0
        self.flags = 0
        self._serial: Optional[serial.Serial] = None
        self._to_print: deque = deque()
        self._handlers = {"hello": self._greeted, "welcome": self._greeted,
                          "status": self._status, "restarted": self._restarted}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._opened_at = 0.0

    # -- what the appliance calls -------------------------------------------------

    def open(self) -> Link:
        """Open the port (raises LinkError when it does not exist) and start the I/O thread."""
        self._serial = open_port(self.port)
        self._hello()
        self._thread = threading.Thread(target=self._run, name="link", daemon=True)
        self._thread.start()
        return self

    def print_text(self, text: str) -> None:
        """Queue print bytes (already typeset: printable ASCII, newline, bell)."""
        data = text.encode("ascii", errors="ignore")
        with self._lock:
            self._to_print.extend(data)
        self._wake()

    def _wake(self) -> None:
        """Cut the I/O thread's wait short so new text goes out at once."""
        port = self._serial
        if port is not None and hasattr(port, "cancel_read"):
            port.cancel_read()

    def cancel(self) -> None:
        """Drop everything not yet printed, here and in the firmware."""
        with self._lock:
            self._to_print.clear()
            self.session.drop_queued(m.PRINT)
            self.session.send(m.CANCEL, b"")
        self._wake()

    @property
    def unprinted(self) -> int:
        """Bytes queued here or in flight (not yet accepted by the firmware)."""
        with self._lock:
            return len(self._to_print) + self.session.pending

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._serial is not None:
            self._serial.close()

    def __enter__(self) -> Link:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the I/O thread -------------------------------------------------------------

    def _hello(self) -> None:
        self._opened_at = self.clock()
        self.session.hello()

    def _reliable(self, ftype: int, seq: int, body: bytes) -> bool:
        """Keys go to on_keys(boot_id, seq, codes), which must keep them before returning
        True: only then are they acknowledged. Keys from a board not yet greeted wait."""
        if self.session.peer_version != m.VERSION:
            return False  # refused, or not yet greeted: its frames are not ours to read
        if ftype != m.KEY:
            return True
        boot_id = self.session.peer_boot_id
        return boot_id is not None and self.on_keys(boot_id, seq, body)

    def restore(self, boot_id: int, seq: int) -> None:
        """Resume duplicate detection from durable storage (before open)."""
        self.session.restore(boot_id, seq)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._serial is None:
                self._reopen()
                continue
            try:
                self._set_wait()
                data = self._read()
                with self._lock:
                    events = self.session.feed(data) if data else []
                    self._feed_print()
                    out = self.session.output()
                if out:
                    self._serial.write(out)
            except (serial.SerialException, OSError) as e:
                log.warning("serial error on %s: %s", self.port, e)
                self._down()
                continue
            for event in events:
                self._handle(event)
            self._check_alive()

    def _read(self) -> bytes:
        """What has arrived, as soon as anything has (pyserial's read(n) would wait for
        all n bytes or the whole timeout, delaying every frame by up to the timeout)."""
        data = self._serial.read(1)
        waiting = self._serial.in_waiting if data else 0
        return data + self._serial.read(waiting) if waiting else data

    def _set_wait(self) -> None:
        with self._lock:
            idle = self.up and not self._to_print and not self.session.pending
        wait = IDLE_WAIT if idle else READ_WAIT
        if self._serial.timeout != wait:  # pyserial reconfigures the port on every set
            self._serial.timeout = wait

    def _handle(self, event: tuple) -> None:
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def _greeted(self, event: Greeting) -> None:
        self.peer_name = event.name
        if event.version != m.VERSION:
            reason = refusal(event.version)
            if reason != self.refused:
                self.refused = reason
                log.error("refusing the typewriter %r on %s: %s", event.name, self.port, reason)
                if self.up:
                    self.up = False
                    self.on_change("down")
                self.on_change("refused")
            return
        self.refused = None
        self.peer_caps = event.caps
        if not self.up:
            self._told_no_printer = False
            self.up = True
            log.info("link up: %s (%s)", self.peer_name, self.port)
            self.on_change("up")

    def _status(self, event: Status) -> None:
        self.flags, self.column, self.printed = event.flags, event.column, event.printed
        if self.flags & m.FLAG_OVERFLOW and not self.overflow:
            self.overflow = True
            log.warning("the typewriter's keyboard buffer overflowed: some keys were lost")
            self.on_change("overflow")

    def _restarted(self, event: Restarted) -> None:
        log.info("typewriter restarted (boot_id %08x)", event.boot_id)
        self.on_change("restarted")

    def _feed_print(self) -> None:
        """Hand the next chunk of print text to the session when the firmware has room."""
        if not self._to_print or not self.up:
            return
        caps = self.peer_caps or 0
        if not caps & m.CAP_PRINTER:
            self.print_dropped += len(self._to_print)
            if not self._told_no_printer:
                self._told_no_printer = True
                log.warning("the typewriter %r has no printer (caps 0x%02x): print text "
                            "dropped", self.peer_name, caps)
            self._to_print.clear()
            return
        credits = self.session.peer_credits
        if self.session.pending or not credits:
            return
        n = min(len(self._to_print), credits, MAX_BODY)
        chunk = bytes(self._to_print.popleft() for _ in range(n))
        if not caps & m.CAP_BELL:
            chunk = chunk.replace(bytes([BELL]), b"")
        if chunk:
            self.session.send(m.PRINT, chunk)

    def _check_alive(self) -> None:
        heard = self.session.last_heard
        since = self.clock() - max(heard or 0.0, self._opened_at)
        if since > DEAD_AFTER:
            log.warning("no word from the typewriter for %.0f s: reopening %s", since, self.port)
            self._down()

    def _down(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass
            self._serial = None
        if self.up:
            self.up = False
            self.on_change("down")

    def _reopen(self) -> None:
        try:
            self._serial = open_port(self.port)
        except LinkError:
            self._stop.wait(REOPEN_EVERY)
            return
        with self._lock:
            self._hello()
