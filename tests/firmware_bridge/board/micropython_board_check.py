"""Runs under MicroPython: the board layer (PicoHal) and the board's main program on
fake pins and a fake UART, since no RP2040 is here. The fake `machine` module records
what the firmware does to each pin; everything above it is the code flashed to the board.

Invoked by test_micropython.py as `micropython micropython_board_check.py BOARD_DIR`.
"""

import sys

sys.path.insert(0, sys.argv[1])

PRESSED = set()  # (column pin, row pin) closed on the fake keyboard
PINS = {}
LATCHES = []  # (x address, y address, data) at each MT8816 strobe


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 2

    def __init__(self, pin, mode=IN, pull=None, value=None):
        self.id = pin
        self.mode = mode
        self.level = 1 if value is None else value
        PINS[pin] = self

    def init(self, mode, value=None):
        self.mode = mode
        if value is not None:
            self.level = value

    def value(self, level=None):
        if level is None:
            if self.mode == Pin.IN:  # a row: low when a key joins it to a driven column
                for col, row in PRESSED:
                    if row == self.id and PINS[col].mode == Pin.OUT and not PINS[col].level:
                        return 0
                return 1
            return self.level
        self.level = level
        if self.id == MT["strobe"] and level:
            x = sum(PINS[p].level << i for i, p in enumerate(MT["ax"]))
            y = sum(PINS[p].level << i for i, p in enumerate(MT["ay"]))
            LATCHES.append((x, y, PINS[MT["data"]].level))


class UART:
    last = None

    def __init__(self, uart_id, baudrate, tx, rx, rxbuf, txbuf):
        self.incoming = bytearray()
        self.sent = bytearray()
        UART.last = self

    def any(self):
        return len(self.incoming)

    def read(self, n):
        data = bytes(self.incoming[:n])
        self.incoming = self.incoming[n:]
        return data

    def write(self, data):
        self.sent.extend(data)


class machine:
    Pin = Pin
    UART = UART

    @staticmethod
    def reset():
        raise AssertionError("the board restarted")


sys.modules["machine"] = machine

import asyncio  # noqa: E402

from firmware_bridge.board import firmware  # noqa: E402
from firmware_bridge.board import messages as m  # noqa: E402
from firmware_bridge.board import model as models  # noqa: E402
from firmware_bridge.board.framing import Decoder, encode_frame  # noqa: E402
from firmware_bridge.board.hal import PicoHal  # noqa: E402
from firmware_bridge.board.keymap import Keymap  # noqa: E402

model = models.load("brother_ax")
pico = model["pico"]
MT = pico["mt8816"]
keymap = Keymap(model)

hal = PicoHal(model)
assert LATCHES == [(c, r, 0) for c in range(8) for r in range(8)], "all crosspoints open"
LATCHES.clear()

# Injection: the key's column and row reach the switch's address lines.
shift, a = keymap.strokes(ord("A"))
hal.close(shift)
hal.close(a)
hal.open(a)
assert LATCHES == [(shift // 8, shift % 8, 1), (a // 8, a % 8, 1), (a // 8, a % 8, 0)], LATCHES

# Scan: a pressed key reads in its own column and row, and nowhere else.
PRESSED.add((pico["columns"][a // 8], pico["rows"][a % 8]))
frame = hal.scan(0.0)
assert frame == [1 << (a % 8) if c == a // 8 else 0 for c in range(8)], frame
assert all(PINS[p].mode == Pin.IN for p in pico["columns"]), "columns left undriven"
PRESSED.clear()
heard = []
PRESSED.add((pico["columns"][3], pico["rows"][5]))
firmware.probe("brother_ax", presses=1, out=heard.append)
assert heard == ["column 3 row 5 (the model says i)"], heard
PRESSED.clear()
boot_id = hal.boot_id()
assert 0 <= boot_id < 2 ** 32


# The board's main program: it says HELLO, answers ours, and types what it is sent.
async def host():
    await asyncio.sleep_ms(100)
    uart = UART.last
    uart.incoming.extend(encode_frame(m.HELLO, 0, m.pack_hello(0, 1, "host")))
    uart.incoming.extend(encode_frame(m.PRINT, 0, b"hi"))
    await asyncio.sleep_ms(600)


async def main():
    task = asyncio.create_task(firmware.run("brother_ax"))
    await host()
    task.cancel()


LATCHES.clear()
asyncio.run(main())
frames = Decoder().feed(bytes(UART.last.sent))
types = [f[0] for f in frames]
assert types[0] == m.HELLO and m.unpack_hello(frames[0][2])[3] == "Brother AX-325 firmware 1.0"
assert m.WELCOME in types and m.STATUS in types, types
assert (m.ACK, 0) in [(f[0], f[1]) for f in frames], "the PRINT was acknowledged"
closed = [(x, y) for x, y, data in LATCHES if data]
h, i = keymap.strokes(ord("h"))[0], keymap.strokes(ord("i"))[0]
assert closed == [(h // 8, h % 8), (i // 8, i % 8)], closed
print("micropython board ok")
