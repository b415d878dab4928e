"""Runs under MicroPython, in a folder holding exactly what `typewriter firmware flash`
copies to the board (plus the fake `machine` module below): the firmware's logic on the
simulated board, then the real board layer (PicoHal) and main program on fake pins.

Invoked by test_micropython.py as `micropython micropython_firmware_check.py BOARD_DIR`.
"""

import sys

sys.path.insert(0, sys.argv[1])

from firmware_bridge.board import messages as m  # noqa: E402
from firmware_bridge.board import model as models  # noqa: E402
from firmware_bridge.board.firmware import Firmware  # noqa: E402
from firmware_bridge.board.session import Session  # noqa: E402
from firmware_bridge.host.simhal import SimHal  # noqa: E402

PRINTABLE = bytes(range(0x20, 0x7F))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(seconds):
    end = clock.now + seconds
    while clock.now < end:
        fw.poll(clock.now)
        host.feed(fw.device.output())
        fw.device.feed(host.output())
        clock.now += 0.002


clock = Clock()
model = models.load("brother_ax")
struck = []
hal = SimHal(model, struck.append)
fw = Firmware(model, hal, clock, boot_id=7)
keys = []
host = Session(0, "host", 1, clock, on_reliable=lambda t, s, b: keys.extend(b) or True)
fw.boot()
host.hello()

# Typed: every printable character, shift and all.
for code in PRINTABLE + b"\n":
    hal.keyboard.type(fw.keymap.strokes(code))
run(30)
assert bytes(keys) == PRINTABLE + b"\n", bytes(keys)
assert bytes(struck) == PRINTABLE + b"\n", bytes(struck)

# Chords reach the host and strike nothing.
keys.clear()
struck.clear()
for code in m.FUNCTION_KEYS:
    hal.keyboard.type(fw.keymap.strokes(code))
run(2)
assert bytes(keys) == bytes(m.FUNCTION_KEYS), bytes(keys)
assert not struck

# Printed: every printable character read back by the logic board; none reported as a key.
keys.clear()
host.send(m.PRINT, PRINTABLE[:62])
host.send(m.PRINT, PRINTABLE[62:] + b"\n")
run(10)
assert bytes(struck) == PRINTABLE + b"\n", bytes(struck)
assert fw.device.printed_count == 96 and not keys

# A key typed while printing waits for the end of the reply.
struck.clear()
host.send(m.PRINT, b"Reply.\n")
run(0.1)
hal.keyboard.type(fw.keymap.strokes(ord("k")))
run(2)
assert bytes(struck) == b"Reply.\nk", bytes(struck)
assert bytes(keys) == b"k"
print("micropython firmware ok")
