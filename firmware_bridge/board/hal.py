"""The hardware layer: the only firmware module that touches `machine`.

`PicoHal` is the real board (a Raspberry Pi Pico wired as docs/hardware.md
shows): it scans the keyboard, which is cut over from the logic board to the
Pico, and closes crosspoints of an MT8816 switch on the logic board's side of
the cable to type. `firmware_bridge.host.simhal.SimHal` is the same surface
without hardware, on the host. Everything above this layer runs on both.

A HAL has scan(now) -> frame, close(position), open(position), bell(), has_bell.
PicoHal adds the UART (read, write), now() and boot_id().
"""

try:
    from typing import Dict, List
except ImportError:  # MicroPython: annotations are never evaluated
    pass


class PicoHal:
    """A Raspberry Pi Pico: keyboard columns driven low one at a time, rows read with
    pull-ups; an MT8816 crosspoint switch addressed by AX/AY, latched by STROBE."""

    def __init__(self, model: "Dict") -> None:
        import time

        from machine import UART, Pin

        self.time = time
        self.Pin = Pin
        pins = model["pico"]
        self.nrows = model["matrix"]["rows"]
        self.columns = [Pin(p, Pin.IN) for p in pins["columns"]]  # undriven until scanned
        self.rows = [Pin(p, Pin.IN, Pin.PULL_UP) for p in pins["rows"]]
        u = pins["uart"]
        self.uart = UART(u["id"], baudrate=u["baud"], tx=Pin(u["tx"]), rx=Pin(u["rx"]),
                         rxbuf=2048, txbuf=1024)
        mt = pins["mt8816"]
        self.ax = [Pin(p, Pin.OUT, value=0) for p in mt["ax"]]
        self.ay = [Pin(p, Pin.OUT, value=0) for p in mt["ay"]]
        self.data = Pin(mt["data"], Pin.OUT, value=0)
        self.strobe = Pin(mt["strobe"], Pin.OUT, value=0)
        self.x_address = mt["x_address"]
        self.y_address = mt["y_address"]
        self.bell_pin = Pin(pins["bell"], Pin.OUT, value=0) if pins.get("bell") is not None \
            else None
        self.has_bell = self.bell_pin is not None
        self._ticks = time.ticks_ms()
        self._ms = 0
        for position in range(len(self.columns) * self.nrows):
            self.open(position)  # the switch's latches power up in no known state

    def now(self) -> float:
        """Seconds since boot, from wrapping ticks."""
        t = self.time.ticks_ms()
        self._ms += self.time.ticks_diff(t, self._ticks)
        self._ticks = t
        return self._ms / 1000

    def boot_id(self) -> int:
        import os

        return int.from_bytes(os.urandom(4), "big")  # the RP2040's ring-oscillator bits

    def scan(self, now: float) -> "List[int]":
        frame = []
        for col in self.columns:
            col.init(self.Pin.OUT, value=0)
            self.time.sleep_us(3)  # let the line settle through the keyboard's film traces
            bits = 0
            for row, pin in enumerate(self.rows):
                if not pin.value():
                    bits |= 1 << row
            col.init(self.Pin.IN)
            frame.append(bits)
        return frame

    def _latch(self, position: int, on: int) -> None:
        col, row = divmod(position, self.nrows)
        x, y = self.x_address[col], self.y_address[row]
        for bit, pin in enumerate(self.ax):
            pin.value((x >> bit) & 1)
        for bit, pin in enumerate(self.ay):
            pin.value((y >> bit) & 1)
        self.data.value(on)
        self.strobe.value(1)
        self.time.sleep_us(1)
        self.strobe.value(0)

    def close(self, position: int) -> None:
        self._latch(position, 1)

    def open(self, position: int) -> None:
        self._latch(position, 0)

    def bell(self) -> None:
        if self.bell_pin is not None:
            self.bell_pin.value(1)
            self.time.sleep_ms(30)
            self.bell_pin.value(0)

    def read(self) -> bytes:
        n = self.uart.any()
        return self.uart.read(n) if n else b""

    def write(self, data: bytes) -> None:
        self.uart.write(data)
