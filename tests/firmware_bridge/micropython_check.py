"""Runs under MicroPython: the protocol core and the device logic, as the firmware imports them.

Invoked by test_micropython.py as `micropython micropython_check.py REPO_ROOT`.
"""

import sys

sys.path.insert(0, sys.argv[1])

from firmware_bridge import messages as m  # noqa: E402
from firmware_bridge.device import Device  # noqa: E402
from firmware_bridge.framing import Decoder, crc16, encode_frame  # noqa: E402
from firmware_bridge.session import Session  # noqa: E402

assert crc16(b"123456789") == 0x29B1
vectors = [
    (m.HELLO, 0, m.pack_hello(7, 0xA1B2C3D4, "tw"), "02010b0107a1b2c3d47477451f00"),
    (m.KEY, 5, b"hi", "07100568690b9b00"),
    (m.ACK, 5, m.pack_ack(512), "0402050203e43a00"),
    (m.CANCEL, 1, b"", "05210138f900"),
    (m.STATUS, 0, m.pack_status(1, 12, 480, 1234), "023005010c01e0010304d2024d00"),
]
for ftype, seq, body, wire in vectors:
    assert encode_frame(ftype, seq, body) == bytes.fromhex(wire), wire
    assert Decoder().feed(bytes.fromhex(wire)) == [(ftype, seq, body)], wire


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
