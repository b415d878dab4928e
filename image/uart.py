"""Boot settings for the typewriter's serial link: which UART lines go into config.txt.

The typewriter's firmware speaks only on the Pico's UART0, wired to the Pi's GPIO
UART (a Pico's USB CDC port is MicroPython's REPL, not the link), so the GPIO UART
is the only wiring. It differs by board: Pi 3/4/Zero 2 W give the good UART (PL011) to
Bluetooth unless `dtoverlay=disable-bt`; the Pi 5 has its own `uart0`. Either way
the kernel must not use it as a console, or boot messages reach the typewriter.
"""

from __future__ import annotations

import re
from typing import List

BOARDS = ("pi4", "pi5", "zero2w")
MARK = "# typewriter appliance: serial link"
_CONSOLE = re.compile(r"^console=(serial\d|ttyAMA\d|ttyS\d)(,\d+)?$")


def config_lines(board: str) -> List[str]:
    if board == "pi5":
        return ["dtparam=uart0=on"]
    return ["enable_uart=1", "dtoverlay=disable-bt"]


def config_txt(text: str, board: str) -> str:
    """config.txt with the UART lines in an `[all]` section at its end (once)."""
    lines = config_lines(board)
    if not lines or MARK in text:
        return text
    return text.rstrip("\n") + "\n\n" + "\n".join([MARK, "[all]", *lines]) + "\n"


def cmdline_txt(text: str) -> str:
    """cmdline.txt (one line) without a serial console: the GPIO UART is the link."""
    words = [w for w in text.split() if not _CONSOLE.match(w)]
    return " ".join(words) + "\n"
