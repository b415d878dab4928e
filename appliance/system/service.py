"""Talking to systemd: READY, STATUS, WATCHDOG and STOPPING over the notify socket.

Uses systemd-python (Debian's python3-systemd, or the `pi` extra) when it is
installed; otherwise writes the same datagrams itself, so a laptop, a test or
a board without the package behaves the same. Outside systemd (no
NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Optional

log = logging.getLogger(__name__)


class Notifier:
    """The service's voice to systemd."""

    def __init__(self, environ: Optional[dict] = None):
        """environ: the process's environment (default), or a given one (then the
        datagrams are written directly: systemd-python reads only the real one)."""
        env = os.environ if environ is None else environ
        self._own_environ = environ is None
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid or pid == str(os.getpid())
        # Ping at half the interval systemd waits, as sd_watchdog_enabled(3) advises.
        self.watchdog_every = int(usec) / 2e6 if usec.isdigit() and for_us else None
        self._send = self._choose_sender()

    @property
    def active(self) -> bool:
        return bool(self.address)

    def _choose_sender(self):
        if not self.address:
            return lambda message: None
        if not self._own_environ:
            return self._datagram
        try:
            from systemd import daemon  # systemd-python

            return lambda message: daemon.notify(message)
        except ImportError:
            return self._datagram

    def _datagram(self, message: str) -> None:
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), address)
        except OSError as e:
            log.warning("cannot notify systemd at %s: %s", self.address, e)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start-up time (a large model is loading)."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def stopping(self) -> None:
        self._send("STOPPING=1")


_SYSLOG_LEVEL = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                 logging.CRITICAL: 2}


class _PriorityPrefix(logging.Formatter):
    """`<N>message`: journald reads the priority from the prefix (sd-daemon(3))."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SYSLOG_LEVEL.get(record.levelno, 6)}>{super().format(record)}"


def configure_logging(verbose: bool) -> None:
    """To the journal, with structured fields, under systemd; to stderr otherwise.

    Log calls add fields with extra={"PERSONA": ..., "LINK": ..., "ERROR_KIND": ...};
    systemd-python's JournalHandler stores upper-case extras as journal fields.
    """
    level = logging.INFO if verbose or os.environ.get("JOURNAL_STREAM") else logging.WARNING
    root = logging.getLogger()
    root.setLevel(level)
    if os.environ.get("JOURNAL_STREAM"):
        try:
            from systemd.journal import JournalHandler

            root.addHandler(JournalHandler(SYSLOG_IDENTIFIER="typewriter"))
            return
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_PriorityPrefix("%(name)s: %(message)s"))
            root.addHandler(handler)
            return
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
