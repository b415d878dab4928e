"""Keyboard scan with per-key eager debounce, on frames a simulated matrix gives."""

from firmware_bridge.board.matrix import Debouncer


def frames(debouncer, timeline):
    """Feed (time, frame) pairs; all events with the time they came out."""
    out = []
    for now, frame in timeline:
        out += [(now, index, pressed) for index, pressed in debouncer.update(frame, now)]
    return out


def test_a_bouncing_contact_gives_one_press_and_one_release():
    d = Debouncer(2, 4, press_s=0.085, release_s=0.015)
    key = 1 << 2  # column 0, row 2
    timeline = []
    t = 0.0
    for i in range(20):  # 20 ms of chatter after the first touch, 1 ms scans
        timeline.append((t, [key if i % 3 != 1 else 0, 0]))
        t += 0.001
    for _ in range(100):  # held
        timeline.append((t, [key, 0]))
        t += 0.001
    for i in range(10):  # chatter on release
        timeline.append((t, [0 if i % 2 == 0 else key, 0]))
        t += 0.001
    for _ in range(30):
        timeline.append((t, [0, 0]))
        t += 0.001
    events = frames(d, timeline)
    assert [(index, pressed) for _, index, pressed in events] == [(2, True), (2, False)]
    assert events[0][0] == 0.0, "eager: the press is reported on the first touch"


def test_each_key_has_its_own_lock():
    d = Debouncer(2, 4, press_s=0.085, release_s=0.015)
    events = frames(d, [(0.0, [1, 0]), (0.001, [1, 1]), (0.002, [1, 3])])
    assert [(index, pressed) for _, index, pressed in events] == [(0, True), (4, True),
                                                                  (5, True)]


def test_a_release_inside_the_lock_is_reported_when_the_lock_ends():
    d = Debouncer(1, 1, press_s=0.05, release_s=0.01)
    events = frames(d, [(0.0, [1]), (0.01, [0]), (0.049, [0]), (0.05, [0])])
    assert events == [(0.0, 0, True), (0.05, 0, False)]


def test_a_tap_shorter_than_one_scan_gap_is_not_invented():
    d = Debouncer(1, 1, press_s=0.05, release_s=0.01)
    assert frames(d, [(0.0, [0]), (0.002, [0])]) == []
