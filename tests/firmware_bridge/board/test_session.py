"""Reliability: stop-and-wait, duplicates, refusals, restarts, over a lossy channel."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.board import messages as m
from firmware_bridge.board.framing import MAX_ENCODED, Decoder, encode_frame
from firmware_bridge.board.session import Session
from tests.firmware_bridge.clock import Clock


def pair(clock, host_accept=None, fw_accept=None):
    """A host and a firmware session; *_accept(ftype, seq, body) -> bool can refuse."""
    host_got, fw_got = [], []

    def receiver(accept, got):
        def on_reliable(ftype, seq, body):
            if accept and not accept(ftype, seq, body):
                return False
            got.append((ftype, body))
            return True
        return on_reliable

    host = Session(0, "host", 0x1111, clock, on_reliable=receiver(host_accept, host_got))
    fw = Session(m.CAP_KEYBOARD, "fw", 0x2222, clock, on_reliable=receiver(fw_accept, fw_got),
                 credits=lambda: 300)
    return host, fw, host_got, fw_got


def shuttle(a, b, rounds=1):
    """Move bytes both ways without loss; returns each end's events."""
    events_a, events_b = [], []
    for _ in range(rounds):
        events_b += b.feed(a.output())
        events_a += a.feed(b.output())
    return events_a, events_b


def frames(data):
    return Decoder().feed(data)


# -- handshake ------------------------------------------------------------------------

def test_hello_is_answered_with_welcome():
    clock = Clock()
    host, fw, _, _ = pair(clock)
    host.hello()
    host_events, fw_events = shuttle(host, fw)
    assert fw_events == [("hello", 1, 0, 0x1111, "host")]
    assert host_events == [("welcome", 1, m.CAP_KEYBOARD, 0x2222, "fw")]
    assert host.peer_boot_id == 0x2222 and fw.peer_boot_id == 0x1111
    assert host.output() == b"", "WELCOME is never answered"


def test_every_hello_is_answered():
    clock = Clock()
    fw = Session(m.CAP_KEYBOARD, "fw", 0x2222, clock)
    hello = encode_frame(m.HELLO, 0, m.pack_hello(0, 0x1111, "host"))
    fw.feed(hello + hello)
    welcome = encode_frame(m.WELCOME, 0, m.pack_hello(m.CAP_KEYBOARD, 0x2222, "fw"))
    assert fw.output() == welcome + welcome


def test_first_boot_id_is_not_a_restart():
    clock = Clock()
    host = Session(0, "host", 1, clock)
    events = host.feed(encode_frame(m.WELCOME, 0, m.pack_hello(0, 9, "fw")))
    assert [e[0] for e in events] == ["welcome"]
    events = host.feed(encode_frame(m.HELLO, 0, m.pack_hello(0, 9, "fw")))
    assert [e[0] for e in events] == ["hello"], "same boot_id again: no restart"


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
    assert host_events[0] == ("restarted", 0x3333)
    assert host_got == [(m.KEY, b"a"), (m.KEY, b"b")]
    assert host.last_seq == 0 and host.peer_boot_id == 0x3333


def test_restore_keeps_duplicate_detection_across_a_host_restart():
    clock = Clock()
    got = []
    host = Session(0, "host", 5, clock, on_reliable=lambda t, s, b: got.append(b) or True)
    host.restore(0x2222, 7)
    events = host.feed(encode_frame(m.WELCOME, 0, m.pack_hello(1, 0x2222, "fw")))
    assert [e[0] for e in events] == ["welcome"], "the restored boot_id: no restart"
    host.feed(encode_frame(m.KEY, 7, b"old"))
    assert frames(host.output()) == [(m.ACK, 7, m.pack_ack(0))], "acked again"
    host.feed(encode_frame(m.KEY, 8, b"new"))
    assert got == [b"new"]


def test_restored_boot_id_that_differs_is_a_restart():
    clock = Clock()
    got = []
    host = Session(0, "host", 5, clock, on_reliable=lambda t, s, b: got.append(b) or True)
    host.restore(0x2222, 0)
    events = host.feed(encode_frame(m.HELLO, 0, m.pack_hello(1, 0x4444, "fw")))
    assert events[0] == ("restarted", 0x4444) and host.last_seq is None
    host.feed(encode_frame(m.KEY, 0, b"fresh"))  # seq 0 again, from the new boot
    assert got == [b"fresh"]


def test_restored_seq_is_not_trusted_before_the_peer_greets():
    """Issue #18 A: after restore() and hello(), a reliable frame from a peer not heard to
    greet since may come from a new boot whose seq happens to equal the restored one: it
    is neither delivered nor acknowledged (the peer retransmits) until a HELLO or WELCOME
    says which boot sent it; the HELLO repeats every second meanwhile."""
    clock = Clock()
    got = []
    host = Session(0, "host", 5, clock, on_reliable=lambda t, s, b: got.append(b) or True)
    host.restore(0x2222, 0)
    host.hello()
    hello = host.output()
    host.feed(encode_frame(m.KEY, 0, b"new boot"))  # the peer's WELCOME was lost
    assert got == [] and host.output() == b"", "not delivered, not acknowledged"
    clock.now = 1.0
    assert host.output() == hello, "HELLO again: the peer's WELCOME will say who it is"
    events = host.feed(encode_frame(m.WELCOME, 0, m.pack_hello(1, 0x3333, "fw")))
    assert events[0] == ("restarted", 0x3333)
    host.feed(encode_frame(m.KEY, 0, b"new boot"))
    assert got == [b"new boot"] and frames(host.output()) == [(m.ACK, 0, m.pack_ack(0))]
    clock.now = 5.0
    assert host.output() == b"", "greeted: no more HELLO"


def test_same_boot_greeting_keeps_the_restored_seq_after_hello():
    clock = Clock()
    got = []
    host = Session(0, "host", 5, clock, on_reliable=lambda t, s, b: got.append(b) or True)
    host.restore(0x2222, 7)
    host.hello()
    host.output()
    host.feed(encode_frame(m.KEY, 7, b"old"))
    assert host.output() == b"", "which boot sent it? not yet known"
    host.feed(encode_frame(m.WELCOME, 0, m.pack_hello(1, 0x2222, "fw")))
    host.feed(encode_frame(m.KEY, 7, b"old"))
    assert frames(host.output()) == [(m.ACK, 7, m.pack_ack(0))] and got == []


# -- sending --------------------------------------------------------------------------

def test_reliable_frames_go_one_at_a_time_in_order():
    clock = Clock()
    host, fw, host_got, _ = pair(clock)
    for i in range(3):
        fw.send(m.KEY, bytes([0x61 + i]))
    assert fw.pending == 3
    first = fw.output()
    assert [f[:2] for f in frames(first)] == [(m.KEY, 0)], "stop-and-wait: one frame in flight"
    host.feed(first)
    shuttle(fw, host, 3)
    assert host_got == [(m.KEY, b"a"), (m.KEY, b"b"), (m.KEY, b"c")]
    assert fw.pending == 0


def test_sequence_wraps_from_255_to_0():
    clock = Clock()
    host, fw, host_got, _ = pair(clock)
    seqs = []
    for i in range(258):
        fw.send(m.KEY, bytes([0x20 + i % 90]))
        out = fw.output()
        seqs += [f[1] for f in frames(out)]
        host.feed(out)
        fw.feed(host.output())
    assert seqs == list(range(256)) + [0, 1]
    assert len(host_got) == 258


def test_ack_carries_credits():
    clock = Clock()
    host, fw, _, _ = pair(clock)
    host.send(m.PRINT, b"hi")
    host_events, _ = shuttle(host, fw)
    assert host_events == [("ack", 0, 300)] and host.peer_credits == 300


def test_ack_for_another_seq_updates_credits_only():
    clock = Clock()
    host = Session(0, "host", 1, clock)
    host.send(m.PRINT, b"x")  # seq 0 in flight
    events = host.feed(encode_frame(m.ACK, 9, m.pack_ack(42)))
    assert events == [("ack", 9, 42)]
    assert host.peer_credits == 42 and host.pending == 1


def test_status_updates_credits():
    clock = Clock()
    host = Session(0, "host", 1, clock)
    assert host.peer_credits is None
    events = host.feed(encode_frame(m.STATUS, 0, m.pack_status(m.FLAG_PAPER_OUT, 3, 77, 9)))
    assert events == [("status", m.FLAG_PAPER_OUT, 3, 77, 9)] and host.peer_credits == 77


def test_retransmission_backs_off_to_one_second():
    clock = Clock()
    fw = Session(0, "fw", 1, clock)
    fw.send(m.KEY, b"x")
    first = fw.output()
    sent_at = []
    for step in range(1, 600):
        clock.now = step * 0.01
        out = fw.output()
        if out:
            assert out == first, "the same frame, same seq"
            sent_at.append(round(clock.now, 2))
    gaps = [round(b - a, 2) for a, b in zip([0.0] + sent_at, sent_at)]
    assert gaps[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8], abs=0.011)
    assert gaps[4:] == pytest.approx([1.0] * len(gaps[4:]), abs=0.011)
    assert len(gaps) >= 6, "never gives up"


def test_next_frame_starts_its_own_backoff():
    clock = Clock()
    host, fw, _, _ = pair(clock)
    fw.send(m.KEY, b"a")
    fw.send(m.KEY, b"b")
    fw.output()
    clock.now = 5.0  # "a" is retransmitted with the longest delay by now
    for _ in range(4):
        fw.output()
        clock.now += 1.0
    host.feed(fw.output())
    fw.feed(host.output())  # ACK of "a": "b" goes out now
    assert [f[2] for f in frames(fw.output())] == [b"b"]
    clock.now += 0.1
    assert [f[2] for f in frames(fw.output())] == [b"b"], "100 ms again, not 1 s"


def test_drop_queued_keeps_the_frame_in_flight():
    clock = Clock()
    host = Session(0, "host", 5, clock)
    host.send(m.PRINT, b"1")
    host.send(m.PRINT, b"2")
    host.send(m.CANCEL, b"")
    host.drop_queued(m.PRINT)
    assert host.pending == 2
    host.output()
    host.feed(encode_frame(m.ACK, 0, m.pack_ack(0)))
    assert frames(host.output()) == [(m.CANCEL, 1, b"")]


def test_unreliable_frames_use_seq_zero_and_are_not_retransmitted():
    clock = Clock()
    fw = Session(0, "fw", 1, clock)
    fw.send_unreliable(m.STATUS, m.pack_status(0, 0, 10, 0))
    assert frames(fw.output()) == [(m.STATUS, 0, m.pack_status(0, 0, 10, 0))]
    clock.now = 10.0
    assert fw.output() == b"" and fw.pending == 0


# -- receiving ------------------------------------------------------------------------

def test_duplicate_is_acked_again_but_delivered_once():
    clock = Clock()
    host, _, host_got, _ = pair(clock)
    frame = encode_frame(m.KEY, 9, b"once")
    host.feed(frame)
    first_ack = host.output()
    assert frames(first_ack) == [(m.ACK, 9, m.pack_ack(0))]
    host.feed(frame)
    assert host.output() == first_ack
    assert host_got == [(m.KEY, b"once")]


def test_refused_frame_is_not_acked_and_arrives_on_retry():
    clock = Clock()
    room = {"open": False}
    host, fw, _, fw_got = pair(clock, fw_accept=lambda t, s, b: room["open"])
    host.send(m.PRINT, b"later")
    shuttle(host, fw)
    assert fw_got == [] and host.pending == 1 and fw.last_seq is None
    room["open"] = True
    clock.now = 0.2
    shuttle(host, fw)
    assert fw_got == [(m.PRINT, b"later")] and host.pending == 0


def test_on_reliable_gets_the_seq():
    clock = Clock()
    seen = []
    host = Session(0, "host", 1, clock, on_reliable=lambda t, s, b: seen.append((t, s, b)))
    host.feed(encode_frame(m.KEY, 42, b"k"))
    assert seen == [(m.KEY, 42, b"k")]
    assert host.output() == b"", "a falsy answer refuses"


def test_unknown_types_and_short_bodies_are_dropped_and_not_heard():
    clock = Clock()
    host = Session(0, "host", 1, clock)
    clock.now = 3.0
    events = host.feed(encode_frame(0x7F, 0, b"?") + encode_frame(m.ACK, 0, b"\x01")
                       + encode_frame(m.STATUS, 0, b"") + encode_frame(m.HELLO, 0, b"\x01"))
    assert events == [] and host.output() == b""
    assert host.decoder.dropped == 4 and host.last_heard is None
    clock.now = 4.0
    host.feed(encode_frame(m.STATUS, 0, m.pack_status(0, 0, 1, 0)))
    assert host.last_heard == 4.0


def test_a_bug_in_on_reliable_is_not_swallowed():
    def broken(ftype, seq, body):
        raise ValueError("storage bug")

    host = Session(0, "host", 1, Clock(), on_reliable=broken)
    with pytest.raises(ValueError):
        host.feed(encode_frame(m.KEY, 0, b"x"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=100), max_size=10), st.binary(max_size=70))
def test_garbage_never_raises_and_a_clean_exchange_still_works(chunks, to_firmware):
    """Garbage at both ends, then a handshake and keys both ways: delivered once, in order
    (tools/fuzz_session.py does this at scale)."""
    clock = Clock()
    host, fw, host_got, fw_got = pair(clock)
    for chunk in chunks:
        host.feed(chunk)
        host.output()
        clock.now += 0.01
    fw.feed(to_firmware)  # a partial frame may stay behind: the first clean one is lost
    fw.output()
    assert len(host.decoder.buffer) <= MAX_ENCODED and len(fw.decoder.buffer) <= MAX_ENCODED
    garbage_got = len(host_got)
    host.hello()
    fw.hello()
    fw.send(m.KEY, b"after")
    fw.send(m.KEY, b"the noise")
    host.send(m.PRINT, b"still here")
    for _ in range(300):
        clock.now += 0.01
        shuttle(fw, host)
        if not fw.pending and not host.pending:
            break
    assert host.greeted and fw.greeted
    assert host_got[garbage_got:] == [(m.KEY, b"after"), (m.KEY, b"the noise")]
    assert fw_got == [(m.PRINT, b"still here")]


# -- end to end -----------------------------------------------------------------------

def lossy(rng, rate):
    """Drops, corrupts and repeats bytes: what a noisy UART with replugs might do."""
    def damage(data):
        out = bytearray()
        for i, byte in enumerate(data):
            r = rng.random()
            if r < rate:
                continue  # lost
            if r < 2 * rate:
                byte ^= 1 << rng.randrange(8)  # corrupted
            out.append(byte)
            if r > 1 - rate / 2:
                out += data[max(0, i - 8) : i + 1]  # a burst repeated
        return bytes(out)
    return damage


@pytest.mark.parametrize("seed", [1, 42])
def test_thousand_keys_through_a_lossy_channel_arrive_once_in_order(seed):
    clock = Clock()
    rng = random.Random(seed)
    damage = lossy(rng, 0.01)
    # The firmware sometimes has no room: refusals must only delay, never lose.
    host, fw, host_got, fw_got = pair(clock, fw_accept=lambda t, s, b: rng.random() > 0.2)
    keys = [bytes([0x20 + i % 90, 0x20 + (i * 7) % 90]) for i in range(1000)]
    prints = [b"p%d" % i for i in range(200)]
    host.hello()
    fw.hello()
    for body in keys:
        fw.send(m.KEY, body)
    for body in prints:
        host.send(m.PRINT, body)
    for _ in range(200000):
        clock.now += 0.01
        host.feed(damage(fw.output()))
        fw.feed(damage(host.output()))
        if fw.pending == 0 and host.pending == 0:
            break
    assert [b for _, b in host_got] == keys
    assert [b for _, b in fw_got] == prints
    assert host.decoder.dropped > 0 and fw.decoder.dropped > 0, "the channel did damage"
