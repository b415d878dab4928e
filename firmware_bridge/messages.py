"""Frame types, constants and bodies of protocol version 1 (../shared/docs/protocol.md).

Runs unchanged on CPython and MicroPython: the firmware imports this file.
"""

import struct

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

PRINT_NEWLINE = 0x0A
PRINT_BELL = 0x07


def is_key_code(code):
    """True for the codes the spec defines; others are reserved and ignored."""
    return 0x20 <= code <= 0x7E or code in (KEY_BACKSPACE, KEY_TAB, KEY_RETURN) or (
        code in FUNCTION_KEYS
    )


def pack_hello(caps, boot_id, name, version=VERSION):
    """Body of HELLO and WELCOME; the name is cut to fit one frame."""
    encoded = name.encode("utf-8")[:56] if isinstance(name, str) else bytes(name)[:56]
    return struct.pack(">BBI", version, caps, boot_id & 0xFFFFFFFF) + encoded


def unpack_hello(body):
    if len(body) < 6:
        raise ValueError("HELLO body shorter than 6 bytes")
    version, caps, boot_id = struct.unpack(">BBI", bytes(body[:6]))
    try:
        name = bytes(body[6:]).decode("utf-8")
    except UnicodeError:
        name = ""
    return version, caps, boot_id, name


def pack_ack(credits):
    return struct.pack(">H", max(0, min(credits, 0xFFFF)))


def unpack_ack(body):
    if len(body) < 2:
        raise ValueError("ACK body shorter than 2 bytes")
    return struct.unpack(">H", bytes(body[:2]))[0]


def pack_status(flags, column, credits, printed):
    return struct.pack(">BBHI", flags, min(column, 255), max(0, min(credits, 0xFFFF)),
                       printed & 0xFFFFFFFF)


def unpack_status(body):
    if len(body) < 8:
        raise ValueError("STATUS body shorter than 8 bytes")
    return struct.unpack(">BBHI", bytes(body[:8]))
