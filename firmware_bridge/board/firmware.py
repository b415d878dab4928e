"""The firmware: keyboard scan, the protocol's Device and print injection, tied together.

`Firmware` is the whole of it without a clock or an event loop of its own:
the board's asyncio tasks (`run`, what main.py starts) and the simulated
typewriter both drive it. Runs unchanged on CPython and MicroPython.
"""

from firmware_bridge.board import messages as m
from firmware_bridge.board.device import Device, Ring
from firmware_bridge.board.injector import Injector
from firmware_bridge.board.keymap import Keymap
from firmware_bridge.board.matrix import Debouncer
from firmware_bridge.board.model import Timing

try:
    from typing import Callable, Dict, Optional
except ImportError:  # MicroPython: annotations are never evaluated
    pass

VERSION = "1.0"
# After printing stops, typed keys still wait this long unless the carriage is
# back at the margin: a reply often arrives in pieces, and a key struck in a
# pause would land inside the reply's line.
REPLY_PAUSE = 1.0
UPTIME_LIMIT = 4 * 3600.0  # single-precision seconds on the RP2040: ~2 ms steps by then
RESTART_WHEN_IDLE = 10.0


class Firmware:
    """The typewriter's microcontroller.

    Keys typed on the keyboard go to the host and are echoed to the logic
    board (the keyboard reaches it only through us). Keys typed while a reply
    prints are held, in order, and delivered and echoed once it has finished,
    so they neither get lost nor land in the reply's line; the reset key alone
    goes at once, as it is how a person stops a reply.
    """

    def __init__(self, model: "Dict", hal: "object", clock: "Callable[[], float]",
                 boot_id: int, name: "Optional[str]" = None) -> None:
        self.timing = Timing(model["timing_ms"])
        matrix = model["matrix"]
        self.hal = hal
        self.keymap = Keymap(model)
        self.debouncer = Debouncer(matrix["columns"], matrix["rows"],
                                   self.timing.debounce_press, self.timing.debounce_release)
        self.injector = Injector(hal, self.keymap, self.timing)
        caps = m.CAP_KEYBOARD | m.CAP_PRINTER | (m.CAP_BELL if hal.has_bell else 0)
        label = name or (model["name"] + " firmware " + VERSION)
        self.device = Device(label, boot_id, clock, caps=caps)
        self.held = Ring(512)
        self.printed_at = -REPLY_PAUSE  # when printing last stopped

    def boot(self) -> None:
        self.device.boot()

    @property
    def printing(self) -> bool:
        return bool(len(self.device.print_queue)) or self.injector.printing

    @property
    def idle(self) -> bool:
        """Nothing typed, held, unsent, unacknowledged or unprinted."""
        return not (self.printing or len(self.held) or len(self.device.keys)
                    or self.device.session.pending or len(self.injector.echo)
                    or self.injector.phase or any(self.debouncer.state))

    def scan(self, now: float) -> None:
        """Read the keyboard once; modifiers first, so Shift and its key may close together."""
        events = self.debouncer.update(self.hal.scan(now), now)
        for index, pressed in events:
            if self.keymap.is_modifier(index):
                self.keymap.event(index, pressed)
        for index, pressed in events:
            if not self.keymap.is_modifier(index):
                code = self.keymap.event(index, pressed)
                if code is not None:
                    self.typed(code, now)

    def typed(self, code: int, now: float) -> None:
        if code == m.KEY_RESET:
            self.device.type_key(code)
        elif len(self.held) or not self._may_deliver(now):
            if not self.held.push(code):
                self.device.overflowed = True
        else:
            self._deliver(code)

    def _may_deliver(self, now: float) -> bool:
        if self.printing or not self.injector.echo.free():
            return False
        return self.injector.column == 0 or now - self.printed_at >= REPLY_PAUSE

    def _deliver(self, code: int) -> None:
        self.device.type_key(code)
        if code not in m.FUNCTION_KEYS:
            self.injector.echo.push(code)

    def inject(self, now: float) -> "Optional[float]":
        """Deliver held keys when they may go, and drive the injector; returns when to
        call again (None: when something changes)."""
        while len(self.held) and self._may_deliver(now):
            self._deliver(self.held.take(1)[0])
        wake = self.injector.poll(now, self.device)
        if self.printing:
            self.printed_at = now
        if len(self.held) and wake is None:
            wake = now + REPLY_PAUSE / 10
        return wake

    def poll(self, now: float) -> "Optional[float]":
        """One step of everything but the serial line (the simulator's loop)."""
        self.scan(now)
        return self.inject(now)


async def run(model_name: str = "brother_ax") -> None:
    """The board's main program: three tasks around one Firmware on a PicoHal."""
    import asyncio

    import machine

    from firmware_bridge.board import model as models
    from firmware_bridge.board.hal import PicoHal

    model = models.load(model_name)
    hal = PicoHal(model)
    fw = Firmware(model, hal, hal.now, hal.boot_id())
    fw.boot()
    scan_ms = max(1, int(fw.timing.scan * 1000))

    async def keyboard() -> None:
        while True:
            fw.scan(hal.now())
            await asyncio.sleep_ms(scan_ms)

    async def printer() -> None:
        while True:
            now = hal.now()
            wake = fw.inject(now)
            wait = 5 if wake is None else min(5, int((wake - now) * 1000))
            await asyncio.sleep_ms(max(0, wait))

    async def link() -> None:
        idle_since = hal.now()
        while True:
            data = hal.read()
            if data:
                fw.device.feed(data)
            out = fw.device.output()
            if out:
                hal.write(out)
            now = hal.now()
            if not fw.idle:
                idle_since = now
            elif now > UPTIME_LIMIT and now - idle_since > RESTART_WHEN_IDLE:
                machine.reset()  # nothing in hand: the host sees a new boot_id, loses nothing
            await asyncio.sleep_ms(2)

    await asyncio.gather(keyboard(), printer(), link())


def probe(model_name: str = "brother_ax", presses: "Optional[int]" = None,
          out: "Callable[[str], None]" = print) -> None:
    """Say which column and row each key pressed closes, to map a new typewriter's
    keyboard (docs/hardware.md); run it on the board with mpremote, Ctrl-C stops."""
    from firmware_bridge.board import model as models
    from firmware_bridge.board.hal import PicoHal

    model = models.load(model_name)
    hal = PicoHal(model)
    timing = Timing(model["timing_ms"])
    rows = model["matrix"]["rows"]
    debouncer = Debouncer(model["matrix"]["columns"], rows, timing.debounce_press,
                          timing.debounce_release)
    names = Keymap(model).names
    while presses is None or presses > 0:
        now = hal.now()
        for index, pressed in debouncer.update(hal.scan(now), now):
            if pressed:
                out(f"column {index // rows} row {index % rows} "
                    f"(the model says {names[index]})")
                presses = None if presses is None else presses - 1
        hal.time.sleep_ms(max(1, int(timing.scan * 1000)))
