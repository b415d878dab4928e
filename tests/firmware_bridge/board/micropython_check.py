"""Runs under MicroPython: the device logic with the protocol core, as the firmware imports them.

Invoked by test_micropython.py as `micropython micropython_check.py REPO_ROOT`.
"""

import sys

sys.path.insert(0, sys.argv[1])

from firmware_bridge.board import messages as m  # noqa: E402
from firmware_bridge.board.device import Device  # noqa: E402
from firmware_bridge.board.session import Session  # noqa: E402

# The spec's vectors under MicroPython are test_micropython.py's CORE_CHECK; this
# file checks the firmware's own side, Device, against a host Session.


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


clock = Clock()
got = []
host = Session(0, "host", 1, clock, on_reliable=lambda t, s, b: got.append(bytes(b)) or True)
device = Device("mp", 2, clock, print_capacity=32)
device.boot()
host.hello()
for code in b"typed on micropython":
    device.type_key(code)
host.send(m.PRINT, b"printed")
for _ in range(200):
    clock.now += 0.05
    host.feed(device.output())
    device.feed(host.output())
printed = bytearray()
while True:
    byte = device.next_print_byte()
    if byte is None:
        break
    printed.append(byte)
    device.printed(byte)
assert b"".join(got) == b"typed on micropython", got
assert bytes(printed) == b"printed", printed
print("micropython ok")
