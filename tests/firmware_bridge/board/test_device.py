"""The firmware's protocol logic against a host Session, back to back, on a fake clock."""

from pathlib import Path

from firmware_bridge.board import messages as m
from firmware_bridge.board import model as models
from firmware_bridge.board.device import Device, Ring
from firmware_bridge.board.framing import Decoder
from firmware_bridge.board.session import Session
from tests.firmware_bridge.clock import Clock


class Bench:
    """A device and a host session wired together, with a print mechanism that can stall.

    `host_away` drops everything in both directions (port closed); `lose_acks`
    drops only what the host sends, so the device retransmits what it already
    delivered.
    """

    def __init__(self, print_capacity=512, greet=True):
        self.clock = Clock()
        self.keys = bytearray()
        self.host_events = []
        self.host = self.new_host()
        self.device = Device("board", 0xBBBB, self.clock, print_capacity=print_capacity)
        self.device.boot()
        if greet:
            self.host.hello()
        self.paper = bytearray()
        self.host_away = False
        self.lose_acks = False

    def new_host(self):
        return Session(0, "host", 0xAAAA, self.clock,
                       on_reliable=lambda t, s, b: self.keys.extend(b) or True)

    def run(self, seconds, printing=True, step=0.01):
        for _ in range(round(seconds / step)):
            self.clock.now += step
            out = self.device.output()
            if not self.host_away:
                self.host_events += self.host.feed(out)
                back = self.host.output()
                if not self.lose_acks:
                    self.device.feed(back)
            while printing:
                byte = self.device.next_print_byte()
                if byte is None:
                    break
                self.paper.append(byte)
                self.device.printed(byte)

    def type(self, text):
        for code in text:
            self.device.type_key(code)

    def statuses(self):
        return [e[1:] for e in self.host_events if e[0] == "status"]


def test_keys_arrive_in_order_once_including_while_the_host_was_away():
    b = Bench()
    b.run(0.2)
    b.type(b"before ")
    b.run(0.5)
    b.host_away = True
    b.type(b"while away")
    b.run(3.0)
    b.host_away = False
    b.run(3.0)
    assert bytes(b.keys) == b"before while away"


def test_retransmitted_keys_are_not_doubled():
    b = Bench()
    b.run(0.2)
    b.lose_acks = True
    b.type(b"once")
    b.run(1.0)
    b.lose_acks = False
    b.run(2.0)
    assert bytes(b.keys) == b"once"


def test_many_keys_in_and_out_of_host_absences_all_arrive_in_order():
    b = Bench()
    b.run(0.2)
    typed = bytes(0x20 + i % 95 for i in range(3000))
    for i in range(0, len(typed), 200):
        b.host_away = (i // 200) % 2 == 1
        b.type(typed[i:i + 200])
        b.run(1.5)
    b.host_away = False
    b.run(5.0)
    assert bytes(b.keys) == typed
    assert not b.statuses()[-1][0] & m.FLAG_OVERFLOW


def test_keys_beyond_the_buffer_are_dropped_and_the_overflow_flag_says_so():
    b = Bench()
    b.run(0.2)
    b.host_away = True
    b.type(bytes(0x20 + i % 90 for i in range(600)))
    b.run(1.0)
    b.host_away = False
    b.run(5.0)
    assert bytes(b.keys) == bytes(0x20 + i % 90 for i in range(512))
    assert b.statuses()[-1][0] & m.FLAG_OVERFLOW, "keys were lost: sticky until reboot"


def test_print_that_does_not_fit_waits_for_room():
    b = Bench(print_capacity=16)
    b.run(0.2)
    b.host.send(m.PRINT, b"0123456789")
    b.host.send(m.PRINT, b"abcdefghij")
    b.run(2.0, printing=False)
    assert b.device.credits() == 6
    assert b.statuses()[-1][2] == 6, "STATUS tells the host the free room"
    assert b.host.pending == 1, "the second PRINT is not acked while there is no room"
    b.run(2.0)
    assert bytes(b.paper) == b"0123456789abcdefghij"
    assert b.host.pending == 0 and b.statuses()[-1][2] == 16


def test_acks_carry_the_free_print_room():
    b = Bench(print_capacity=100)
    b.run(0.2)
    b.host.send(m.PRINT, b"x" * 30)
    b.run(0.05, printing=False)
    assert [e[2] for e in b.host_events if e[0] == "ack"] == [70]
    assert b.host.peer_credits == 70


def test_cancel_drops_everything_not_yet_printed():
    b = Bench()
    b.run(0.2)
    b.host.send(m.PRINT, b"never to be printed")
    b.run(0.2, printing=False)
    b.host.send(m.CANCEL, b"")
    b.run(0.5)
    assert b.paper == bytearray()
    assert b.device.credits() == 512


def test_status_every_second_and_on_change():
    b = Bench()
    b.run(3.05)
    quiet = len(b.statuses())
    assert 3 <= quiet <= 5
    b.device.type_key(ord("a"))
    b.run(0.05)
    assert b.statuses()[-1][1] == 1, "column moved with the keystroke"
    b.host.send(m.PRINT, b"xy\n")
    b.run(0.1, printing=False)
    assert b.statuses()[-1] == (m.FLAG_PRINTING, 1, 509, 0)
    b.run(0.1)
    assert b.statuses()[-1] == (0, 0, 512, 3)


def test_column_follows_keys_and_print_bytes():
    d = Device("board", 1, Clock())
    d.type_key(m.KEY_BACKSPACE)
    assert d.column == 0, "backspace stops at the margin"
    for code in b"abc":
        d.type_key(code)
    d.type_key(m.KEY_BACKSPACE)
    d.type_key(m.KEY_SUBMIT)
    assert d.column == 2, "function keys do not move the carriage"
    d.type_key(m.KEY_RETURN)
    assert d.column == 0
    for byte in b"hi\x07":
        d.printed(byte)
    assert (d.column, d.printed_count) == (2, 3), "a bell rings in place but is counted"
    d.printed(0x01)
    assert (d.column, d.printed_count) == (2, 3), "an unprintable byte prints nothing"
    d.printed_count = 0xFFFFFFFF
    d.printed(ord("x"))
    assert d.printed_count == 0, "the counter wraps at 2**32"


def test_a_dropped_key_still_moves_the_carriage():
    d = Device("board", 1, Clock(), key_capacity=512)
    for _ in range(520):
        d.type_key(ord("k"))
    assert d.overflowed and d.column == 520 and len(d.keys) == 512


def test_new_boot_id_is_accepted_from_seq_zero():
    b = Bench()
    b.run(0.2)
    b.type(b"ab")
    b.run(0.5)
    b.device = Device("board", 0xCCCC, b.clock)  # rebooted: new boot_id, seq back to 0
    b.device.boot()
    b.device.type_key(ord("c"))
    b.run(0.5)
    assert bytes(b.keys) == b"abc"
    assert ("restarted", 0xCCCC) in b.host_events


def test_keys_wait_for_a_host_that_restored_an_old_session():
    """The host restarted with (old boot_id, last seq 0) from storage while the board
    rebooted, and the host's HELLO is lost: KEY seq 0 of the new boot must not pass
    for a duplicate of the old one."""
    b = Bench(greet=False)
    b.host_away = True
    b.type(b"x")
    b.run(2.0)
    b.host = b.new_host()
    b.host.restore(0xBBB0, 0)  # and its HELLO is lost on the way
    b.host_away = False
    b.run(3.0)
    assert bytes(b.keys) == b"x"


def test_a_lost_welcome_cannot_drop_the_first_key_of_a_new_boot():
    """Issue #18 A. Both ends restarted: the host restored (old boot_id, last seq 0), the
    board's boot HELLO went nowhere, the host's HELLO arrived but the board's WELCOME was
    lost. The board's first KEY has seq 0: it must not pass for the old boot's duplicate."""
    b = Bench(greet=False)
    b.host_away = True
    b.type(b"x")
    b.run(2.0)  # the boot HELLOs are lost: the host is not there yet
    b.host = b.new_host()
    b.host.restore(0xBBB0, 0)
    b.host.hello()
    b.device.feed(b.host.output())  # the host's HELLO arrives: the board is greeted
    lost = b.device.output()  # its WELCOME (and the first KEY, seq 0) are lost on the line
    assert [f[0] for f in Decoder().feed(lost)] == [m.WELCOME, m.STATUS, m.KEY]
    b.host_away = False
    b.run(3.0)
    assert bytes(b.keys) == b"x"
    assert ("restarted", 0xBBBB) in b.host_events


def test_hello_repeats_until_the_host_answers():
    b = Bench(greet=False)
    b.host_away = True  # the boot HELLO is lost
    b.type(b"hi")
    b.run(0.5)
    b.host_away = False
    b.run(0.3)
    assert b.keys == bytearray(), "no KEY before the host has heard who we are"
    b.run(1.0)
    assert bytes(b.keys) == b"hi"
    b.run(2.0)
    assert len([e for e in b.host_events if e[0] == "hello"]) == 1, "answered: no more HELLO"


def test_no_model_senses_paper_out_so_the_device_claims_no_paper_sensor():
    """Issue #18 F: FLAG_PAPER_OUT stays in the protocol, but no typewriter model wires a
    paper sensor, so a Device attribute nothing sets would only pretend one. A model that
    gains a paper pin must wire it (Device flag, HAL read) and change this test."""
    for path in sorted(Path(models.models_dir()).glob("*.json")):
        pins = models.load(str(path))["pico"]
        assert not [k for k in pins if "paper" in k], f"{path.name} has a paper pin: wire it"
    d = Device("board", 1, Clock())
    assert not hasattr(d, "paper_out")
    d.type_key(ord("a"))
    d.overflowed = True
    assert not d.flags() & m.FLAG_PAPER_OUT


def test_ring_wraps_around():
    r = Ring(4)
    assert r.extend(b"abc") and r.take(2) == b"ab"
    assert r.extend(b"def") and not r.push(ord("g")) and r.free() == 0
    assert r.take(10) == b"cdef" and len(r) == 0
