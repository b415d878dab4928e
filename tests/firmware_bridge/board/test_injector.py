"""Print injection against a fake clock: what closes when, and what counts as printed."""

import pytest

from firmware_bridge.board import messages as m
from firmware_bridge.board import model as models
from firmware_bridge.board.device import Device
from firmware_bridge.board.injector import Injector
from firmware_bridge.board.keymap import Keymap
from firmware_bridge.board.model import Timing
from tests.firmware_bridge.clock import Clock

MS = 0.001


class Switch:
    """The crosspoint switch: a log of (time, action, key name)."""

    def __init__(self, clock, keymap):
        self.clock, self.keymap, self.log = clock, keymap, []

    def close(self, position):
        self.log.append((round(self.clock.now, 6), "close", self.keymap.names[position]))

    def open(self, position):
        self.log.append((round(self.clock.now, 6), "open", self.keymap.names[position]))

    def bell(self):
        self.log.append((round(self.clock.now, 6), "bell", None))


@pytest.fixture
def rig():
    model = models.load("brother_ax")
    model["timing_ms"] = dict(model["timing_ms"], hold=38, release=45, char=10, cr=200,
                              cr_per_column=5.4, lf=20)
    clock = Clock()
    keymap = Keymap(model)
    switch = Switch(clock, keymap)
    device = Device("t", 1, clock)
    injector = Injector(switch, keymap, Timing(model["timing_ms"]))
    return clock, switch, device, injector


def run(clock, device, injector, limit=10.0):
    """Step the fake clock to each deadline the injector asks for, until it is idle."""
    while clock.now < limit:
        wake = injector.poll(clock.now, device)
        if wake is None:
            return
        assert wake > clock.now
        clock.now = wake
    raise AssertionError("injector never went idle")


def test_hold_release_char_and_return_times(rig):
    clock, switch, device, injector = rig
    device.print_queue.extend(b"ab\nc")
    run(clock, device, injector)
    a_next = 0.038 + 0.045 + 0.010
    b_next = a_next + 0.083 + 0.010
    cr_next = b_next + 0.038 + 0.045 + 0.200 + 2 * 0.0054 + 0.020  # two columns to return
    assert switch.log == [
        (0.0, "close", "a"), (0.038, "open", "a"),
        (round(a_next, 6), "close", "b"), (round(a_next + 0.038, 6), "open", "b"),
        (round(b_next, 6), "close", "RETURN"), (round(b_next + 0.038, 6), "open", "RETURN"),
        (round(cr_next, 6), "close", "c"), (round(cr_next + 0.038, 6), "open", "c"),
    ]
    assert device.printed_count == 4 and device.column == 1
    assert clock.now == pytest.approx(cr_next + 0.093), "done after c's release and wait"


def test_printed_counts_only_once_the_mechanism_is_done(rig):
    clock, switch, device, injector = rig
    device.print_queue.extend(b"x")
    injector.poll(0.0, device)
    assert device.printed_count == 0 and device.flags() & m.FLAG_PRINTING
    assert injector.poll(0.038, device) == pytest.approx(0.093), "released: 45 + 10 ms to wait"
    injector.poll(0.092, device)
    assert device.printed_count == 0
    injector.poll(0.093, device)
    assert device.printed_count == 1 and not device.flags() & m.FLAG_PRINTING


def test_shift_closes_first_and_opens_with_the_key(rig):
    clock, switch, device, injector = rig
    device.print_queue.extend(b"A?")
    run(clock, device, injector)
    assert [(action, name) for _, action, name in switch.log] == [
        ("close", "SHIFT"), ("close", "a"), ("open", "SHIFT"), ("open", "a"),
        ("close", "SHIFT"), ("close", "/"), ("open", "SHIFT"), ("open", "/")]
    assert switch.log[0][0] == switch.log[1][0] and switch.log[2][0] == switch.log[3][0]


def test_bell_and_unprintable_bytes_take_no_time_and_count(rig):
    clock, switch, device, injector = rig
    device.print_queue.extend(b"\x07\x01z")
    injector.poll(0.0, device)
    assert switch.log == [(0.0, "bell", None), (0.0, "close", "z")]
    assert device.printed_count == 1, "the bell is counted; 0x01 prints nothing and is not"


def test_echoes_go_first_and_are_not_counted_as_printed(rig):
    clock, switch, device, injector = rig
    device.print_queue.extend(b"p")
    injector.echo.extend(b"e")
    run(clock, device, injector)
    assert [name for _, action, name in switch.log if action == "close"] == ["e", "p"]
    assert device.printed_count == 1
