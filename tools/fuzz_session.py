#!/usr/bin/env python3
"""Fuzz both ends of the serial protocol: the host's Session and the firmware's Device.

    .venv/bin/python tools/fuzz_session.py --frames 1000000 --seed 1

Feeds --frames generated frames, the same byte stream to both ends, each frame in one
to three feed() calls so frames also break across reads:

  random      random bytes, zeros included
  mutated     a valid frame (any type, known or not) with 1-4 bit flips, byte changes,
              insertions, deletions or repeated runs
  truncated   a valid frame cut short (the rest never comes; the next frame follows)
  oversized   a run of non-zero bytes longer than any frame, or a frame whose CRC is right
              but whose payload is longer than 64 bytes
  bad_crc     a valid frame with a wrong CRC
  unknown     a frame of an unknown type, CRC right
  short_body  HELLO, WELCOME, ACK or STATUS with a CRC right but a body too short
  hostile     a valid HELLO, WELCOME, ACK or STATUS with random fields (any version,
              boot_id, credits, flags): frames the protocol lets change an end's state

Asserted, else the script exits 1 with the reason:
- no exception from feed() or output();
- no hang: each feed() call takes under --max-feed-ms of CPU time;
- no state corruption: before each --window frames of garbage the firmware types
  random keys and the host sends random print text, whose first frames are lost, so
  the garbage meets both ends with a frame in flight; after it the two ends finish
  over a clean line on a simulated clock: every key arrives once, in order, and the
  text is printed whole.
  Garbage (all kinds but hostile) must change nothing: nothing delivered, and the
  exchange after it runs without a new handshake. After a window with hostile frames
  the host says HELLO first, as it does when it reopens the port, and the exchange
  must still deliver everything. A garbage frame that happens to be a valid one
  (a mutation that left the frame whole, e.g. a byte inserted after its delimiter, or
  kept the CRC right by chance) is not fed but counted, by kind, so the oracle stays
  exact; --frames counts the frames fed.

Prints one JSON object: frames, bytes, seconds, frames_per_second, the count of each
kind, clean exchanges, the slowest feed, the seed and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_bridge.board import messages as m  # noqa: E402
from firmware_bridge.board.device import Device  # noqa: E402
from firmware_bridge.board.framing import (  # noqa: E402
    MAX_BODY,
    Decoder,
    cobs_encode,
    crc16,
    encode_frame,
)
from firmware_bridge.board.session import Session  # noqa: E402

KINDS = {  # relative weights
    "random": 20, "mutated": 25, "truncated": 10, "oversized": 8, "bad_crc": 12,
    "unknown": 5, "short_body": 8, "hostile": 12,
}
CONTROL = (m.HELLO, m.WELCOME, m.ACK, m.STATUS)
UNKNOWN = tuple(t for t in range(256) if t not in m.KNOWN_TYPES)


class Failure(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def raw_frame(ftype: int, seq: int, body: bytes, crc_xor: int = 0) -> bytes:
    """A wire frame of any length and type, CRC right unless crc_xor."""
    payload = bytes([ftype & 0xFF, seq & 0xFF]) + body
    crc = crc16(payload) ^ crc_xor
    return cobs_encode(payload + bytes([crc >> 8, crc & 0xFF])) + b"\x00"


def any_frame(rng: random.Random) -> bytes:
    ftype = rng.choice(m.KNOWN_TYPES + UNKNOWN[:8])
    return raw_frame(ftype, rng.randrange(256), rng.randbytes(rng.randrange(MAX_BODY + 1)))


def hostile(rng: random.Random, avoid: tuple[int, ...]) -> bytes:
    ftype = rng.choice(CONTROL)
    seq = rng.randrange(256)
    while ftype == m.ACK and seq in avoid:  # a right ACK for a frame in flight is no garbage
        seq = rng.randrange(256)
    if ftype in (m.HELLO, m.WELCOME):
        name = rng.randbytes(rng.randrange(20))  # not always UTF-8
        body = m.pack_hello(rng.randrange(256), rng.getrandbits(32), name,
                            version=rng.randrange(256))
    elif ftype == m.ACK:
        body = m.pack_ack(rng.randrange(0x10000)) + rng.randbytes(rng.randrange(3))
    else:
        body = m.pack_status(rng.randrange(256), rng.randrange(256), rng.randrange(0x10000),
                             rng.getrandbits(32))
    return encode_frame(ftype, seq, body)


def generate(kind: str, rng: random.Random, avoid: tuple[int, ...]) -> bytes:
    if kind == "random":
        data = bytearray(rng.randbytes(rng.randrange(1, 100)))
        for _ in range(rng.randrange(3)):
            data[rng.randrange(len(data))] = 0
        return bytes(data)
    if kind == "mutated":
        data = bytearray(any_frame(rng))
        for _ in range(rng.randrange(1, 5)):
            op = rng.randrange(5)
            i = rng.randrange(len(data))
            if op == 0:
                data[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[i] = rng.randrange(256)
            elif op == 2:
                data.insert(i, rng.randrange(256))
            elif op == 3 and len(data) > 1:
                del data[i]
            else:
                data[i:i] = data[i:i + rng.randrange(1, 9)]
        return bytes(data)
    if kind == "truncated":
        frame = any_frame(rng)
        return frame[:rng.randrange(1, len(frame) - 1)]
    if kind == "oversized":
        if rng.random() < 0.5:
            return bytes(rng.randrange(1, 256) for _ in range(rng.randrange(70, 400))) + b"\x00"
        body = rng.randbytes(rng.randrange(MAX_BODY + 1, 250))
        return raw_frame(rng.choice(m.KNOWN_TYPES), rng.randrange(256), body)
    if kind == "bad_crc":
        ftype = rng.choice(m.KNOWN_TYPES)
        body = rng.randbytes(rng.randrange(MAX_BODY + 1))
        return raw_frame(ftype, rng.randrange(256), body, crc_xor=rng.randrange(1, 0x10000))
    if kind == "unknown":
        body = rng.randbytes(rng.randrange(MAX_BODY + 1))
        return raw_frame(rng.choice(UNKNOWN), rng.randrange(256), body)
    if kind == "short_body":
        ftype = rng.choice(CONTROL)
        need = {m.HELLO: 6, m.WELCOME: 6, m.ACK: 2, m.STATUS: 8}[ftype]
        return raw_frame(ftype, rng.randrange(256), rng.randbytes(rng.randrange(need)))
    return hostile(rng, avoid)


def would_decode(decoder: Decoder, data: bytes) -> bool:
    """Whether data, after what decoder holds, completes a frame (without changing it)."""
    probe = Decoder(decoder.known_types)
    probe.buffer = bytearray(decoder.buffer)
    probe.overlong = decoder.overlong
    return bool(probe.feed(data))


class Ends:
    """A host Session and a firmware Device, with what each delivered."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.clock = Clock()
        self.keys = bytearray()
        self.host = Session(0, "fuzz host", rng.getrandbits(32), self.clock,
                            on_reliable=self._host_reliable)
        self.device = Device("fuzz board", rng.getrandbits(32), self.clock)
        self.paper = bytearray()
        self.host.hello()
        self.device.boot()

    def _host_reliable(self, ftype: int, seq: int, body: bytes) -> bool:
        if ftype == m.KEY:
            self.keys += body
        return True

    def in_flight(self) -> tuple[int, ...]:
        return tuple(s.in_flight[0] for s in (self.host, self.device.session)
                     if s.in_flight is not None)

    def begin(self) -> None:
        """Type keys and send print text; their first frames are lost, so the garbage
        that follows meets both ends with a frame in flight."""
        rng = self.rng
        self.typed = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz .,\n")
                           for _ in range(rng.randrange(1, 40)))
        self.text = bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!?\n")
                          for _ in range(rng.randrange(1, 40)))
        self.keys.clear()
        self.paper_before = len(self.paper)
        for code in self.typed:
            self.device.type_key(code)
        self.host.send(m.PRINT, self.text)
        self.device.output()
        self.host.output()

    def finish(self, max_rounds: int = 3000) -> int:
        """Over a clean line now: what begin() sent must arrive once, in order."""
        typed, text, paper_before = self.typed, self.text, self.paper_before
        for _ in range(max_rounds):
            self.clock.now += 0.01
            self.host.feed(self.device.output())
            self.device.feed(self.host.output())
            while True:
                byte = self.device.next_print_byte()
                if byte is None:
                    break
                self.paper.append(byte)
                self.device.printed(byte)
            if (bytes(self.keys) == typed and self.paper.endswith(text)
                    and not self.host.pending and not self.device.session.pending
                    and not len(self.device.keys)):
                break
        if bytes(self.keys) != typed:
            raise Failure(f"keys: typed {typed!r}, delivered {bytes(self.keys)!r}")
        if not self.paper.endswith(text):
            raise Failure(f"print: sent {text!r}, paper ends {bytes(self.paper[-60:])!r}")
        return len(self.paper) - paper_before - len(text)  # forged print bytes (none allowed)


def fuzz(frames: int, seed: int, window: int, max_feed_ms: float) -> dict:
    rng = random.Random(seed)
    ends = Ends(rng)
    ends.begin()
    ends.finish()  # the handshake, then a first clean exchange
    ends.begin()
    kinds = list(KINDS)
    weights = [KINDS[k] for k in kinds]
    counts = dict.fromkeys(kinds, 0)
    skipped = dict.fromkeys(kinds, 0)
    exchanges = fed_bytes = fed = 0
    slowest = 0.0
    dirty = False
    clock = time.thread_time
    started = time.perf_counter()
    while fed < frames:
        kind = rng.choices(kinds, weights)[0]
        data = generate(kind, rng, ends.in_flight())
        if kind not in ("hostile", "short_body") and (
                would_decode(ends.host.decoder, data)
                or would_decode(ends.device.session.decoder, data)):
            skipped[kind] += 1  # garbage that is a valid frame by chance: not garbage
            continue
        fed += 1
        counts[kind] += 1
        fed_bytes += len(data)
        dirty = dirty or kind == "hostile"
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(3))))
        keys_before, queued_before = len(ends.keys), len(ends.device.print_queue)
        for piece in (data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])):
            for feed in (ends.host.feed, ends.device.feed):
                t0 = clock()
                feed(piece)
                spent = clock() - t0
                slowest = max(slowest, spent)
                if spent * 1000 > max_feed_ms:
                    raise Failure(f"feed took {spent * 1000:.1f} ms on a {kind} frame")
        ends.clock.now += 0.001
        ends.host.output()  # answers to garbage go nowhere; the ends must not care
        ends.device.output()
        if len(ends.keys) != keys_before or len(ends.device.print_queue) != queued_before:
            raise Failure(f"a {kind} frame delivered something: {data!r}")
        if fed % window == 0 or fed == frames:
            if dirty:
                ends.host.hello()  # as after a reopen: the greeting sorts out who is who
            forged = ends.finish()
            if forged:
                raise Failure(f"{forged} print bytes nobody sent")
            exchanges += 1
            dirty = False
            ends.begin()
    seconds = time.perf_counter() - started
    return {
        "frames": fed, "skipped_valid_by_chance": skipped, "bytes": fed_bytes,
        "seconds": round(seconds, 1), "frames_per_second": round(fed / seconds),
        "kinds": counts, "clean_exchanges": exchanges,
        "slowest_feed_ms": round(slowest * 1000, 3), "max_feed_ms": max_feed_ms,
        "dropped": {"host": ends.host.decoder.dropped,
                    "device": ends.device.session.decoder.dropped},
        "seed": seed, "python": platform.python_version(),
        "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores",
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--window", type=int, default=1000,
                        help="frames of garbage between clean exchanges")
    parser.add_argument("--max-feed-ms", type=float, default=100.0,
                        help="CPU time one feed() call may take")
    args = parser.parse_args(argv)
    try:
        result = fuzz(args.frames, args.seed, args.window, args.max_feed_ms)
    except Failure as e:
        print(json.dumps({"ok": False, "seed": args.seed, "error": str(e)}))
        return 1
    print(json.dumps(dict(ok=True, **result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
