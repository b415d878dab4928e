"""Frame types, constants and bodies of protocol version 1 (../shared/docs/protocol.md).

Runs unchanged on CPython and MicroPython: the firmware imports this file.
Unpackers raise ValueError for a body too short to hold their fields, which a
session counts as a bad frame; extra trailing bytes are ignored.
"""

import struct

from firmware_bridge.board.framing import MAX_BODY

try:
    from typing import Tuple, Union
except ImportError:  # MicroPython: annotations are never evaluated
    pass

VERSION = 1

HELLO = 0x01
ACK = 0x02
WELCOME = 0x03
KEY = 0x10
PRINT = 0x20
CANCEL = 0x21
STATUS = 0x30
RELIABLE = (KEY, PRINT, CANCEL)
KNOWN_TYPES = (HELLO, ACK, WELCOME, KEY, PRINT, CANCEL, STATUS)

CAP_KEYBOARD = 0x01
CAP_PRINTER = 0x02
CAP_BELL = 0x04

FLAG_PRINTING = 0x01
FLAG_PAPER_OUT = 0x02
FLAG_OVERFLOW = 0x04

KEY_BACKSPACE = 0x08
KEY_TAB = 0x09
KEY_RETURN = 0x0A
KEY_RESET = 0x81
KEY_NEXT_PERSONA = 0x82
KEY_TOGGLE_SPEECH = 0x83
KEY_REPRINT = 0x84
KEY_SUBMIT = 0x85
FUNCTION_KEYS = (KEY_RESET, KEY_NEXT_PERSONA, KEY_TOGGLE_SPEECH, KEY_REPRINT, KEY_SUBMIT)

# HELLO body: version, caps, boot_id (6 bytes), then the name in what is left of a frame.
MAX_NAME = MAX_BODY - 6

PRINT_NEWLINE = 0x0A
PRINT_BELL = 0x07


def is_key_code(code: int) -> bool:
    """True for the codes the spec defines; others are reserved and ignored."""
    return 0x20 <= code <= 0x7E or code in (KEY_BACKSPACE, KEY_TAB, KEY_RETURN) or (
        code in FUNCTION_KEYS
    )


def pack_hello(caps: int, boot_id: int, name: "Union[str, bytes]", version: int = VERSION
               ) -> bytes:
    """Body of HELLO and WELCOME; a long name is cut, whole characters only, to fit a frame."""
    encoded = name.encode("utf-8") if isinstance(name, str) else bytes(name)
    if len(encoded) > MAX_NAME:
        cut = MAX_NAME
        while cut and encoded[cut] & 0xC0 == 0x80:  # never split a UTF-8 sequence
            cut -= 1
        encoded = encoded[:cut]
    return struct.pack(">BBI", version, caps, boot_id & 0xFFFFFFFF) + encoded


def unpack_hello(body: bytes) -> "Tuple[int, int, int, str]":
    """(version, caps, boot_id, name); a name that is not UTF-8 reads as ""."""
    if len(body) < 6:
        raise ValueError("HELLO body shorter than 6 bytes")
    version, caps, boot_id = struct.unpack(">BBI", bytes(body[:6]))
    try:
        name = bytes(body[6:]).decode("utf-8")
    except UnicodeError:
        name = ""
    return version, caps, boot_id, name


def pack_ack(credits: int) -> bytes:
    """ACK body; credits are clamped to what a u16 can say."""
    return struct.pack(">H", max(0, min(credits, 0xFFFF)))


def unpack_ack(body: bytes) -> int:
    if len(body) < 2:
        raise ValueError("ACK body shorter than 2 bytes")
    return struct.unpack(">H", bytes(body[:2]))[0]


def pack_status(flags: int, column: int, credits: int, printed: int) -> bytes:
    """STATUS body; column and credits saturate, printed wraps at 2**32 as the spec says."""
    return struct.pack(">BBHI", flags, max(0, min(column, 255)), max(0, min(credits, 0xFFFF)),
                       printed & 0xFFFFFFFF)


def unpack_status(body: bytes) -> "Tuple[int, int, int, int]":
    """(flags, column, credits, printed)."""
    if len(body) < 8:
        raise ValueError("STATUS body shorter than 8 bytes")
    return struct.unpack(">BBHI", bytes(body[:8]))
