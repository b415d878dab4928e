"""The firmware's protocol logic against a host Session, back to back."""

from firmware_bridge import messages as m
from firmware_bridge.device import Device
from firmware_bridge.session import Session
from tests.firmware_bridge.test_session import Clock


class Bench:
    """A device and a host session wired together, with a print mechanism that can stall."""

    def __init__(self, print_capacity=512):
        self.clock = Clock()
        self.keys = bytearray()
        self.host_events = []
        self.host = Session(0, "host", 0xAAAA, self.clock,
                            on_reliable=lambda t, b: self.keys.extend(b) or True)
        self.device = Device("board", 0xBBBB, self.clock, print_capacity=print_capacity)
        self.device.boot()
        self.host.hello()
        self.paper = bytearray()
        self.host_away = False

    def run(self, seconds, printing=True, step=0.01):
        for _ in range(int(seconds / step)):
            self.clock.now += step
            out = self.device.output()
            if not self.host_away:
                self.host_events += self.host.feed(out)
                self.device.feed(self.host.output())
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


def test_keys_beyond_the_buffer_are_dropped_and_the_overflow_flag_says_so():
    b = Bench()
    b.run(0.2)
    b.host_away = True
    for i in range(600):
        b.device.type_key(0x20 + i % 90)
    b.host_away = False
    b.run(5.0)
    assert len(b.keys) == 512
    assert b.statuses()[-1][0] & m.FLAG_OVERFLOW


def test_print_that_does_not_fit_waits_for_room():
    b = Bench(print_capacity=16)
    b.run(0.2)
    b.host.send(m.PRINT, b"0123456789")
    b.host.send(m.PRINT, b"abcdefghij")
    b.run(1.0, printing=False)
    assert bytes(b.device.print_queue) == b"0123456789"
    assert b.host.pending == 1, "the second PRINT is not acked while there is no room"
    b.run(2.0)
    assert bytes(b.paper) == b"0123456789abcdefghij"


def test_cancel_drops_everything_not_yet_printed():
    b = Bench()
    b.run(0.2)
    b.host.send(m.PRINT, b"never to be printed")
    b.run(0.2, printing=False)
    b.host.send(m.CANCEL, b"")
    b.run(0.5)
    assert b.paper == bytearray()


def test_status_every_second_and_on_change():
    b = Bench()
    b.run(3.05)
    quiet = len(b.statuses())
    assert 3 <= quiet <= 5
    b.device.type_key(ord("a"))
    b.run(0.05)
    assert b.statuses()[-1][1] == 1, "column moved with the keystroke"
    b.host.send(m.PRINT, b"xy\n")
    b.run(0.3)
    flags, column, credits, printed = b.statuses()[-1]
    assert (column, credits, printed) == (0, 512, 3)


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
