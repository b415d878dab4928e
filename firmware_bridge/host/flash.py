"""Putting the firmware on a Raspberry Pi Pico (host side, CPython only).

The board needs MicroPython already (drag its UF2 onto the Pico in BOOTSEL
mode once); `flash` then copies our modules, the typewriter model and a
main.py that starts the firmware, with mpremote, and resets the board.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

from appliance.errors import UserError
from firmware_bridge.board import messages as m
from firmware_bridge.board import model as models

BRIDGE = Path(__file__).resolve().parents[1]
BOARD = BRIDGE / "board"  # exactly what goes on the board: nothing host-only lives there

MAIN = """import asyncio

from firmware_bridge.board.firmware import run

asyncio.run(run({model!r}))
"""
CAPS = ((m.CAP_KEYBOARD, "keyboard"), (m.CAP_PRINTER, "printer"), (m.CAP_BELL, "bell"))


class FlashError(UserError):
    """The board cannot be flashed or checked; the message names the fix."""


def board_files(model: str) -> List[Tuple[str, bytes]]:
    """(path on the board, content) of everything flash copies, main.py last."""
    models.load(model)  # a model that would not load on the board stops here
    files = [("firmware_bridge/__init__.py", (BRIDGE / "__init__.py").read_bytes())]
    files += [("firmware_bridge/board/" + path.name, path.read_bytes())
              for path in sorted(BOARD.glob("*.py"))]
    spec = BOARD / "typewriters" / (model + ".json")
    files.append(("firmware_bridge/board/typewriters/" + spec.name, spec.read_bytes()))
    files.append(("main.py", MAIN.format(model=model).encode()))
    return files


def mpremote_command(port: str) -> List[str]:
    """The mpremote call that copies a staged board tree (in its working directory)."""
    return [sys.executable, "-m", "mpremote", "connect", port, "fs", "cp", "-r",
            "firmware_bridge", ":", "+", "fs", "cp", "main.py", ":main.py", "+", "reset"]


def flash(port: str, model: str, timeout: float = 120.0) -> List[str]:
    """Copy the firmware to the board on port ("auto": the first one found); returns the
    paths copied."""
    if importlib.util.find_spec("mpremote") is None:
        raise FlashError("mpremote is not installed: pip install 'typewriter-appliance[firmware]'")
    files = board_files(model)
    with tempfile.TemporaryDirectory() as staging:
        for path, content in files:
            target = Path(staging) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        try:
            result = subprocess.run(mpremote_command(port), cwd=staging, capture_output=True,
                                    text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FlashError(f"the board on {port} stopped answering while being flashed: "
                             "unplug it, plug it back in and flash again") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        raise FlashError(f"no MicroPython board answered on {port} "
                         f"({said[-1] if said else 'mpremote failed'}): plug the Pico in by USB "
                         "with MicroPython installed, or pass --port")
    return [path for path, _ in files]


def check(port: str, timeout: float = 3.0) -> Tuple[str, int, int, int]:
    """HELLO to the firmware on port; (name, version, caps, boot_id) from its WELCOME.

    Keys the board sends meanwhile are refused (not acknowledged), so it keeps
    them for the appliance: a check never loses a keystroke.
    """
    import random

    from firmware_bridge.board.session import Session
    from firmware_bridge.host.link import open_port

    session = Session(0, "typewriter firmware check", random.getrandbits(32), time.monotonic,
                      on_reliable=lambda ftype, seq, body: False)
    serial_port = open_port(port)
    try:
        session.hello()
        serial_port.write(session.output())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in session.feed(serial_port.read(256)):
                if event.kind in ("welcome", "hello"):
                    return event.name, event.version, event.caps, event.boot_id
    finally:
        serial_port.close()
    raise FlashError(f"no typewriter firmware answered on {port} within {timeout:.0f} s: check "
                     "the wiring (Pico TX to the Pi's RX and back), that the board has the "
                     "firmware (typewriter firmware flash), or pass --port")


def describe(name: str, version: int, caps: int, boot_id: int) -> str:
    """One line for a person: what answered."""
    has = [word for bit, word in CAPS if caps & bit] or ["nothing"]
    return f"{name}: protocol {version}, caps {' '.join(has)}, boot_id {boot_id:08x}"


def available_models() -> List[str]:
    return sorted(p.stem for p in (BOARD / "typewriters").glob("*.json"))

