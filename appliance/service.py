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
from typing import Optional

log = logging.getLogger(__name__)


class Notifier:
    """The service's voice to systemd."""

    def __init__(self, environ: Optional[dict] = None):
        env = os.environ if environ is None else environ
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
