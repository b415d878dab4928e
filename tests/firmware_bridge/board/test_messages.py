"""Message bodies: the spec's vectors both ways, round trips, and short bodies refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.board import messages as m
from firmware_bridge.board.framing import MAX_BODY, Decoder, encode_frame

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


def body_of(wire_hex):
    """The body of the single frame in a spec row, as a receiver decodes it."""
    [(_, _, body)] = Decoder().feed(bytes.fromhex(wire_hex))
    return body


def test_hello_vector_both_ways():
    wire = "02 01 0b 01 07 a1 b2 c3 d4 74 77 45 1f 00"
    body = m.pack_hello(m.CAP_KEYBOARD | m.CAP_PRINTER | m.CAP_BELL, 0xA1B2C3D4, "tw")
    assert encode_frame(m.HELLO, 0, body) == bytes.fromhex(wire)
    assert m.unpack_hello(body_of(wire)) == (m.VERSION, 0x07, 0xA1B2C3D4, "tw")


def test_welcome_vector_both_ways():
    wire = "02 03 03 01 03 01 01 06 01 70 69 0d 41 00"
    body = m.pack_hello(m.CAP_KEYBOARD | m.CAP_PRINTER, 1, "pi")
    assert encode_frame(m.WELCOME, 0, body) == bytes.fromhex(wire)
    assert m.unpack_hello(body_of(wire)) == (1, 0x03, 1, "pi")


def test_ack_vector_both_ways():
    wire = "04 02 05 02 03 e4 3a 00"
    assert encode_frame(m.ACK, 5, m.pack_ack(512)) == bytes.fromhex(wire)
    assert m.unpack_ack(body_of(wire)) == 512


def test_status_vector_both_ways():
    wire = "02 30 05 01 0c 01 e0 01 03 04 d2 02 4d 00"
    body = m.pack_status(m.FLAG_PRINTING, 12, 480, 1234)
    assert encode_frame(m.STATUS, 0, body) == bytes.fromhex(wire)
    assert m.unpack_status(body_of(wire)) == (m.FLAG_PRINTING, 12, 480, 1234)


def test_constants_match_the_spec():
    assert (m.HELLO, m.ACK, m.WELCOME, m.KEY, m.PRINT, m.CANCEL, m.STATUS) == (
        0x01, 0x02, 0x03, 0x10, 0x20, 0x21, 0x30)
    assert set(m.RELIABLE) == {m.KEY, m.PRINT, m.CANCEL}
    assert set(m.KNOWN_TYPES) == {0x01, 0x02, 0x03, 0x10, 0x20, 0x21, 0x30}
    assert (m.KEY_SUBMIT, m.KEY_REPRINT, m.KEY_RESET) == (0x85, 0x84, 0x81)


@given(u8, u8, u32, st.text(max_size=20))
def test_hello_round_trip(version, caps, boot_id, name):
    body = m.pack_hello(caps, boot_id, name, version)
    assert len(body) <= MAX_BODY
    got = m.unpack_hello(body)
    assert got[:3] == (version, caps, boot_id)
    assert name.startswith(got[3])


@given(st.text(min_size=60, max_size=80))
def test_long_names_are_cut_on_a_character_boundary(name):
    body = m.pack_hello(0, 0, name)
    assert len(body) <= MAX_BODY
    assert name.startswith(m.unpack_hello(body)[3])  # still valid UTF-8, a prefix


def test_undecodable_name_reads_as_empty():
    assert m.unpack_hello(bytes([1, 0, 0, 0, 0, 1, 0xE2, 0x82])) == (1, 0, 1, "")


@given(u16)
def test_ack_round_trip(credits):
    assert m.unpack_ack(m.pack_ack(credits)) == credits


@given(u8, u8, u16, u32)
def test_status_round_trip(flags, column, credits, printed):
    assert m.unpack_status(m.pack_status(flags, column, credits, printed)) == (
        flags, column, credits, printed)


def test_out_of_range_fields_saturate_or_wrap():
    assert m.unpack_ack(m.pack_ack(70000)) == 0xFFFF
    assert m.unpack_ack(m.pack_ack(-3)) == 0
    assert m.unpack_status(m.pack_status(0, 300, -1, 2**32 + 5)) == (0, 255, 0, 5)


@pytest.mark.parametrize("unpack,size", [(m.unpack_hello, 6), (m.unpack_ack, 2),
                                          (m.unpack_status, 8)])
def test_short_bodies_raise_value_error(unpack, size):
    with pytest.raises(ValueError):
        unpack(bytes(size - 1))
    unpack(bytes(size))


def test_key_codes():
    defined = {c for c in range(256) if m.is_key_code(c)}
    assert defined == set(range(0x20, 0x7F)) | {0x08, 0x09, 0x0A} | set(range(0x81, 0x86))
