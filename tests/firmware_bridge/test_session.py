"""Reliability: stop-and-wait, duplicates, refusals, restarts, over a lossy channel."""

import random

import pytest

from firmware_bridge import messages as m
from firmware_bridge.framing import Decoder, encode_frame
from firmware_bridge.session import Session


class Clock:
    """Time that moves only when the test says: the session takes its clock by design."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def pair(clock, host_accept=None, fw_accept=None):
    host_got, fw_got = [], []

    def host_rx(ftype, body):
        if host_accept and not host_accept(ftype, body):
            return False
        host_got.append((ftype, body))
        return True

    def fw_rx(ftype, body):
        if fw_accept and not fw_accept(ftype, body):
            return False
        fw_got.append((ftype, body))
        return True

    host = Session(0, "host", 0x1111, clock, on_reliable=host_rx)
    fw = Session(m.CAP_KEYBOARD, "fw", 0x2222, clock, on_reliable=fw_rx, credits=lambda: 300)
    return host, fw, host_got, fw_got


def shuttle(a, b, rounds=1):
    events_a, events_b = [], []
    for _ in range(rounds):
        events_b += b.feed(a.output())
        events_a += a.feed(b.output())
    return events_a, events_b


def test_hello_is_answered_with_welcome():
    clock = Clock()
    host, fw, _, _ = pair(clock)
    host.hello()
    host_events, fw_events = shuttle(host, fw)
    assert fw_events == [("hello", 1, 0, 0x1111, "host")]
    assert host_events == [("welcome", 1, m.CAP_KEYBOARD, 0x2222, "fw")]
    assert host.peer_boot_id == 0x2222 and fw.peer_boot_id == 0x1111
    assert host.output() == b"", "WELCOME is never answered"


def test_reliable_frames_go_one_at_a_time_in_order():
    clock = Clock()
    host, fw, host_got, _ = pair(clock)
    for i in range(3):
        fw.send(m.KEY, bytes([0x61 + i]))
    assert fw.pending == 3
    first = Decoder().feed(fw.output())
    assert [f[0] for f in first] == [m.KEY], "stop-and-wait: one frame in flight"
    host.feed(encode_frame(m.KEY, first[0][1], first[0][2]))
    fw.feed(host.output())
    shuttle(fw, host, 3)
    assert host_got == [(m.KEY, b"a"), (m.KEY, b"b"), (m.KEY, b"c")]
    assert fw.pending == 0
    assert fw.peer_credits is None or fw.peer_credits >= 0


def test_ack_carries_credits():
    clock = Clock()
    host, fw, _, _ = pair(clock)
    host.send(m.PRINT, b"hi")
    host_events, _ = shuttle(host, fw)
    assert ("ack", 0, 300) in host_events and host.peer_credits == 300


def test_retransmission_backs_off_to_one_second():
    clock = Clock()
    fw = Session(0, "fw", 1, clock)
    fw.send(m.KEY, b"x")
    assert fw.output()
    sent_at = []
    for step in range(1, 600):
        clock.now = step * 0.01
        if fw.output():
            sent_at.append(round(clock.now, 2))
    gaps = [round(b - a, 2) for a, b in zip([0.0] + sent_at, sent_at)]
    assert gaps[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8], abs=0.011)
    assert gaps[4:] == pytest.approx([1.0] * len(gaps[4:]), abs=0.011)
    assert len(gaps) >= 6, "never gives up"


def test_duplicate_is_acked_again_but_delivered_once():
    clock = Clock()
    host, _, host_got, _ = pair(clock)
    frame = encode_frame(m.KEY, 9, b"once")
    host.feed(frame)
    first_ack = host.output()
    host.feed(frame)
    assert host.output() == first_ack
    assert host_got == [(m.KEY, b"once")]


def test_refused_frame_is_not_acked_and_arrives_on_retry():
    clock = Clock()
    room = {"open": False}
    host, fw, _, fw_got = pair(clock, fw_accept=lambda t, b: room["open"])
    host.send(m.PRINT, b"later")
    shuttle(host, fw)
    assert fw_got == [] and host.pending == 1
    room["open"] = True
    clock.now = 0.2
    shuttle(host, fw)
    assert fw_got == [(m.PRINT, b"later")] and host.pending == 0


def test_peer_restart_resets_acceptance():
    clock = Clock()
    host, fw, host_got, _ = pair(clock)
    fw.hello()
    fw.send(m.KEY, b"a")  # seq 0
    shuttle(fw, host)
    # The firmware reboots: a new Session with a new boot_id starts at seq 0 again.
    fw2 = Session(0, "fw", 0x3333, clock)
    fw2.hello()
    fw2.send(m.KEY, b"b")  # also seq 0: must not be taken for a duplicate
    _, host_events = shuttle(fw2, host)
    assert ("restarted", 0x3333) in host_events
    assert host_got == [(m.KEY, b"a"), (m.KEY, b"b")]


def test_restore_keeps_duplicate_detection_across_a_host_restart():
    clock = Clock()
    got = []
    host = Session(0, "host", 5, clock, on_reliable=lambda t, b: got.append(b) or True)
    host.restore(0x2222, 7)
    host.feed(encode_frame(m.WELCOME, 0, m.pack_hello(1, 0x2222, "fw")))
    host.feed(encode_frame(m.KEY, 7, b"old"))
    host.feed(encode_frame(m.KEY, 8, b"new"))
    assert got == [b"new"]


def test_drop_queued_keeps_the_frame_in_flight():
    clock = Clock()
    host = Session(0, "host", 5, clock)
    host.send(m.PRINT, b"1")
    host.send(m.PRINT, b"2")
    host.send(m.CANCEL, b"")
    host.drop_queued(m.PRINT)
    assert host.pending == 2


def test_thousand_keys_through_a_lossy_channel_arrive_once_in_order():
    clock = Clock()
    rng = random.Random(42)
    host, fw, host_got, _ = pair(clock)

    def damage(data):
        out = bytearray()
        for byte in data:
            r = rng.random()
            if r < 0.01:
                continue  # lost
            if r < 0.02:
                byte ^= 1 << rng.randrange(8)  # corrupted
            out.append(byte)
            if r > 0.995:
                out += data[-8:]  # a burst of repeated bytes
        return bytes(out)

    bodies = [bytes([0x20 + i % 90, 0x20 + (i * 7) % 90]) for i in range(1000)]
    for body in bodies:
        fw.send(m.KEY, body)
    for _ in range(200000):
        clock.now += 0.01
        host.feed(damage(fw.output()))
        fw.feed(damage(host.output()))
        if fw.pending == 0:
            break
    assert [b for _, b in host_got] == bodies
