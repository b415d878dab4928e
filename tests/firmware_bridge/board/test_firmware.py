"""The whole firmware on a simulated board, a host Session on the other end, a fake clock.

The reference model's own timings (85/15 ms debounce, 38/45 ms injection),
not the simulator's fast ones.
"""

from firmware_bridge.board import messages as m
from firmware_bridge.board import model as models
from firmware_bridge.board.firmware import REPLY_PAUSE, Firmware
from firmware_bridge.board.session import Session
from firmware_bridge.host.simhal import SimHal
from tests.firmware_bridge.clock import Clock

PRINTABLE = bytes(range(0x20, 0x7F))


class Rig:
    """Firmware on a SimHal; the host keeps keys with the time they arrived."""

    def __init__(self):
        self.clock = Clock()
        self.struck = []
        model = models.load("brother_ax")
        self.hal = SimHal(model, lambda code: self.struck.append((self.clock.now, code)))
        self.fw = Firmware(model, self.hal, self.clock, boot_id=5)
        self.keys = []
        self.host = Session(0, "host", 9, self.clock, on_reliable=self._keys)
        self.fw.boot()
        self.host.hello()

    def _keys(self, ftype, seq, body):
        self.keys += [(self.clock.now, code) for code in body]
        return True

    def type(self, text):
        for code in text:
            self.hal.keyboard.type(self.fw.keymap.strokes(code))

    def run(self, seconds, step=0.002):
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.fw.poll(self.clock.now)
            self.host.feed(self.fw.device.output())
            self.fw.device.feed(self.host.output())
            self.clock.now += step

    def run_until(self, done, limit=120.0):
        end = self.clock.now + limit
        while not done():
            assert self.clock.now < end, "timed out"
            self.run(0.1)

    @property
    def typed(self):
        return bytes(code for _, code in self.keys)

    @property
    def paper(self):
        return bytes(code for _, code in self.struck)


def test_every_printable_character_typed_reaches_the_host_and_the_paper_as_itself():
    rig = Rig()
    rig.type(PRINTABLE + b"\n")
    rig.run_until(lambda: len(rig.keys) == 96 and len(rig.struck) == 96)
    assert rig.typed == PRINTABLE + b"\n"
    assert rig.paper == PRINTABLE + b"\n", "each key echoed once onto the logic board"


def test_every_printable_character_injected_is_read_back_as_itself_and_never_as_a_key():
    rig = Rig()
    rig.run(0.1)
    rig.host.send(m.PRINT, PRINTABLE[:62])
    rig.host.send(m.PRINT, PRINTABLE[62:] + b"\n")
    rig.run_until(lambda: rig.fw.device.printed_count == 96)
    assert rig.paper == PRINTABLE + b"\n"
    assert rig.keys == [], "printed characters are not keys"


def test_chords_reach_the_host_and_strike_nothing():
    rig = Rig()
    for code in m.FUNCTION_KEYS:
        rig.hal.keyboard.type(rig.fw.keymap.strokes(code))
    rig.run_until(lambda: len(rig.keys) == 5)
    assert rig.typed == bytes(m.FUNCTION_KEYS)
    assert rig.struck == []


def test_keys_typed_during_a_reply_wait_for_its_end_and_strike_after_it():
    rig = Rig()
    rig.run(0.1)
    reply = b"Good morrow, traveller.\n"
    rig.host.send(m.PRINT, reply)
    rig.run(0.3)
    rig.type(b"why?")
    rig.run_until(lambda: len(rig.keys) == 4 and len(rig.struck) == len(reply) + 4)
    end_of_reply = rig.struck[len(reply) - 1][0]
    assert rig.paper == reply + b"why?", "not struck into the reply's line"
    assert rig.typed == b"why?"
    assert all(at >= end_of_reply for at, _ in rig.keys), "delivered after the reply"


def test_keys_held_after_a_reply_that_stops_mid_line_wait_a_pause():
    rig = Rig()
    rig.run(0.1)
    rig.host.send(m.PRINT, b"Hark")
    rig.run(0.1)
    rig.type(b"k")
    rig.run_until(lambda: len(rig.struck) == 5)
    stopped = rig.struck[3][0] + 0.083  # the last k of Hark struck, held and released
    assert rig.keys[0][0] - stopped >= REPLY_PAUSE - 0.01
    assert rig.paper == b"Harkk"


def test_reset_goes_at_once_during_a_reply_and_cancel_drops_the_rest():
    rig = Rig()
    rig.run(0.1)
    rig.host.send(m.PRINT, b"x" * 60)
    rig.run(0.5)
    rig.type(bytes([m.KEY_RESET]))
    rig.run(0.3)
    assert rig.typed == bytes([m.KEY_RESET])
    assert rig.fw.printing
    rig.host.send(m.CANCEL, b"")
    rig.run(0.3)
    assert not rig.fw.printing
    printed = rig.fw.device.printed_count
    assert 5 < printed < 20 and rig.paper == b"x" * printed


def test_more_keys_held_than_the_buffer_holds_raise_the_overflow_flag():
    rig = Rig()
    rig.run(0.1)
    rig.host.send(m.PRINT, b"y" * 62)
    rig.run(0.2)
    for _ in range(513):
        rig.fw.typed(ord("k"), rig.clock.now)
    rig.run(0.1)
    events = rig.host.feed(rig.fw.device.output())
    assert rig.fw.device.flags() & m.FLAG_OVERFLOW or any(
        e[0] == "status" and e[1] & m.FLAG_OVERFLOW for e in events)
    assert len(rig.fw.held) == 512


def test_a_bouncing_key_types_one_character():
    rig = Rig()
    rig.run(0.1)
    (e,) = rig.fw.keymap.strokes(ord("e"))
    for i in range(12):  # 24 ms of chatter on press, then held, then chatter on release
        (rig.hal.keyboard.close if i % 3 != 2 else rig.hal.keyboard.open)(e)
        rig.run(0.002)
    rig.hal.keyboard.close(e)
    rig.run(0.1)
    for i in range(6):
        (rig.hal.keyboard.open if i % 2 == 0 else rig.hal.keyboard.close)(e)
        rig.run(0.002)
    rig.hal.keyboard.open(e)
    rig.run(0.5)
    assert rig.typed == b"e" and rig.paper == b"e"
