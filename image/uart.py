"""Boot settings for the typewriter's serial link: which UART lines go into config.txt.

The GPIO UART differs by board: Pi 3/4/Zero 2 W give the good UART (PL011) to
Bluetooth unless `dtoverlay=disable-bt`; the Pi 5 has its own `uart0`. Either way
the kernel must not use it as a console, or boot messages reach the typewriter.
"""

from __future__ import annotations

import re
from typing import List

BOARDS = ("pi4", "pi5", "zero2w")
SERIALS = ("gpio", "usb")
MARK = "# typewriter appliance: serial link"
_CONSOLE = re.compile(r"^console=(serial\d|ttyAMA\d|ttyS\d)(,\d+)?$")


def config_lines(board: str, serial: str) -> List[str]:
    if serial != "gpio":
        return []
    if board == "pi5":
        return ["dtparam=uart0=on"]
    return ["enable_uart=1", "dtoverlay=disable-bt"]


def config_txt(text: str, board: str, serial: str) -> str:
    """config.txt with the UART lines in an `[all]` section at its end (once)."""
    lines = config_lines(board, serial)
    if not lines or MARK in text:
        return text
    return text.rstrip("\n") + "\n\n" + "\n".join([MARK, "[all]", *lines]) + "\n"


def cmdline_txt(text: str, serial: str) -> str:
    """cmdline.txt (one line) without a serial console when the GPIO UART is the link."""
    if serial != "gpio":
        return text
    words = [w for w in text.split() if not _CONSOLE.match(w)]
    return " ".join(words) + "\n"
