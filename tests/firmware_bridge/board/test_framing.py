"""Framing: the spec's test vectors, round trips, and a decoder garbage cannot break."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.board import messages as m
from firmware_bridge.board.framing import (
    MAX_BODY,
    MAX_ENCODED,
    Decoder,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_frame,
    encode_frame,
)

# (frame type, seq, body, wire bytes) — every row of the spec's table.
VECTORS = [
    (m.HELLO, 0, m.pack_hello(0x07, 0xA1B2C3D4, "tw"),
     "02 01 0b 01 07 a1 b2 c3 d4 74 77 45 1f 00"),
    (m.WELCOME, 0, m.pack_hello(0x03, 1, "pi"), "02 03 03 01 03 01 01 06 01 70 69 0d 41 00"),
    (m.KEY, 5, b"hi", "07 10 05 68 69 0b 9b 00"),
    (m.KEY, 6, bytes([m.KEY_RETURN]), "06 10 06 0a 84 13 00"),
    (m.ACK, 5, m.pack_ack(512), "04 02 05 02 03 e4 3a 00"),
    (m.PRINT, 0, b"Good morrow.\n", "02 20 10 47 6f 6f 64 20 6d 6f 72 72 6f 77 2e 0a e6 bf 00"),
    (m.CANCEL, 1, b"", "05 21 01 38 f9 00"),
    (m.STATUS, 0, m.pack_status(m.FLAG_PRINTING, 12, 480, 1234),
     "02 30 05 01 0c 01 e0 01 03 04 d2 02 4d 00"),
]


def test_crc_check_value():
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"56789", crc16(b"1234")) == 0x29B1, "continues over more data"
    assert crc16(b"") == 0xFFFF


@pytest.mark.parametrize("ftype,seq,body,wire", VECTORS)
def test_spec_vector_encodes(ftype, seq, body, wire):
    assert encode_frame(ftype, seq, body) == bytes.fromhex(wire)


@pytest.mark.parametrize("ftype,seq,body,wire", VECTORS)
def test_spec_vector_decodes(ftype, seq, body, wire):
    assert Decoder().feed(bytes.fromhex(wire)) == [(ftype, seq, body)]


def test_spec_bodies_unpack():
    assert m.unpack_hello(VECTORS[0][2]) == (1, 0x07, 0xA1B2C3D4, "tw")
    assert m.unpack_ack(VECTORS[4][2]) == 512
    assert m.unpack_status(VECTORS[7][2]) == (1, 12, 480, 1234)


def test_body_longer_than_62_is_refused():
    encode_frame(m.PRINT, 0, b"x" * MAX_BODY)
    with pytest.raises(ValueError):
        encode_frame(m.PRINT, 0, b"x" * (MAX_BODY + 1))


@given(st.binary(max_size=600))
def test_cobs_round_trip_has_no_zero(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + len(data) // 254 + 1
    assert cobs_decode(encoded) == data


@given(st.binary(max_size=600))
def test_cobs_decode_accepts_only_what_encode_makes(data):
    try:
        decoded = cobs_decode(data)
    except ValueError:
        return
    assert cobs_encode(decoded) == data


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x03\x01", b"\x02\x00", b"\xff" + b"\x01" * 254])
def test_cobs_decode_rejects(bad):
    with pytest.raises(ValueError):
        cobs_decode(bad)


def test_decode_frame_rejects_bad_crc_and_lengths():
    good = encode_frame(m.KEY, 3, b"ok")[:-1]
    assert decode_frame(good) == (m.KEY, 3, b"ok")
    with pytest.raises(ValueError):
        decode_frame(cobs_encode(cobs_decode(good)[:-1] + b"\x00"))  # CRC byte changed
    with pytest.raises(ValueError):
        decode_frame(cobs_encode(b"\x10\x00\x00"))  # shorter than type, seq and CRC
    payload = bytes([m.PRINT, 0]) + b"x" * (MAX_BODY + 1)
    crc = crc16(payload)
    with pytest.raises(ValueError):
        decode_frame(cobs_encode(payload + bytes([crc >> 8, crc & 0xFF])))  # body of 63


frames = st.tuples(st.sampled_from(m.KNOWN_TYPES), st.integers(0, 255),
                   st.binary(max_size=MAX_BODY))


@given(st.lists(frames, max_size=20))
def test_frames_round_trip_through_the_decoder(items):
    wire = b"".join(encode_frame(*f) for f in items)
    assert Decoder().feed(wire) == [tuple(f) for f in items]


@given(st.lists(frames, min_size=1, max_size=10), st.integers(1, 7))
def test_byte_at_a_time_is_the_same_as_all_at_once(items, chunk):
    wire = b"".join(encode_frame(*f) for f in items)
    d = Decoder()
    got = []
    for i in range(0, len(wire), chunk):
        got += d.feed(wire[i : i + chunk])
    assert got == [tuple(f) for f in items]


@settings(max_examples=300)
@given(st.lists(st.one_of(frames, st.binary(min_size=1, max_size=200)), max_size=12),
       st.integers(0, 2**32 - 1))
def test_garbage_truncation_and_bit_flips_never_desynchronise(items, seed):
    """Every good frame that follows a delimiter is decoded, whatever came before."""
    rng = random.Random(seed)
    wire = bytearray()
    expected = []
    for item in items:
        if isinstance(item, tuple):
            frame = encode_frame(*item)
            kind = rng.choice(["good", "truncated", "flipped"])
            if kind == "good":
                wire += frame
                expected.append(tuple(item))
            elif kind == "truncated":
                wire += frame[: rng.randrange(len(frame) - 1)] + b"\x00"
            else:
                bad = bytearray(frame[:-1])
                i, bit = rng.randrange(len(bad)), rng.randrange(8)
                bad[i] ^= 1 << bit
                if not bad[i]:  # keep it one frame: flip a bit that leaves no delimiter
                    bad[i] = frame[i] ^ (1 << ((bit + 1) % 8))
                wire += bytes(bad) + b"\x00"
        else:
            wire += item + b"\x00"  # garbage, then the delimiter a receiver resyncs on
    decoded = iter(Decoder().feed(bytes(wire)))
    # Every good frame comes out, in order. (A damaged frame whose bytes happen to
    # carry a matching CRC-16, 1 in 65,536, is a valid frame and may come out too.)
    assert all(any(got == want for got in decoded) for want in expected)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_arbitrary_bytes_never_raise_and_the_buffer_stays_bounded(chunks):
    d = Decoder(m.KNOWN_TYPES)
    for chunk in chunks:
        d.feed(chunk)
        assert len(d.buffer) <= MAX_ENCODED
    good = encode_frame(m.KEY, 7, b"after")
    assert d.feed(b"\x00" + good) == [(m.KEY, 7, b"after")]


def test_overlong_run_is_dropped_and_counted():
    d = Decoder()
    assert d.feed(b"\x55" * 5000) == []
    good = encode_frame(m.KEY, 1, b"a")
    assert d.feed(b"\x00" + good) == [(m.KEY, 1, b"a")]
    assert d.dropped == 1


def test_unknown_types_and_short_payloads_are_dropped():
    d = Decoder(m.KNOWN_TYPES)
    assert d.feed(encode_frame(0x7F, 0, b"?") + cobs_encode(b"\x10") + b"\x00") == []
    assert d.dropped == 2
