"""Frames on the wire: COBS( payload || CRC16 ) || 0x00.

Runs unchanged on CPython and MicroPython: the firmware imports this file, so
only bytes/bytearray are used and typing is imported only where it exists.
"""

try:
    from typing import List, Optional, Tuple

    Frame = Tuple[int, int, bytes]  # (type, seq, body)
except ImportError:  # MicroPython: annotations are never evaluated
    pass

MAX_PAYLOAD = 64
MAX_BODY = MAX_PAYLOAD - 2
# The longest valid encoded frame: payload + CRC, plus COBS overhead, without the delimiter.
MAX_ENCODED = MAX_PAYLOAD + 2 + (MAX_PAYLOAD + 2) // 254 + 1


def _crc_table() -> "List[int]":
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE, table-driven (MicroPython's binascii has no crc_hqx).

    Pass a previous result as `crc` to continue over more data.
    """
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ byte]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """Consistent-overhead byte stuffing: the result contains no zero byte."""
    out = bytearray([0])
    code_at = 0
    code = 1
    for byte in data:
        if byte:
            out.append(byte)
            code += 1
        if not byte or code == 0xFF:
            out[code_at] = code
            code_at = len(out)
            out.append(0)
            code = 1
    out[code_at] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Undo cobs_encode; ValueError for anything cobs_encode could not have made."""
    if not data:
        raise ValueError("empty COBS frame")
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError("zero byte inside a COBS frame")
        end = i + code
        if end > n:
            raise ValueError("COBS frame truncated")
        block = data[i + 1 : end]
        if 0 in block:
            raise ValueError("zero byte inside a COBS frame")
        out.extend(block)
        i = end
        if code != 0xFF and i < n:
            out.append(0)
        elif code == 0xFF and i == n:
            raise ValueError("COBS frame ends in a full block")
    return bytes(out)


def encode_frame(ftype: int, seq: int, body: bytes = b"") -> bytes:
    """The complete wire bytes of one frame, delimiter included."""
    if len(body) > MAX_BODY:
        raise ValueError("frame body longer than 62 bytes")
    payload = bytes([ftype & 0xFF, seq & 0xFF]) + bytes(body)
    crc = crc16(payload)
    return cobs_encode(payload + bytes([crc >> 8, crc & 0xFF])) + b"\x00"


def decode_frame(encoded: bytes) -> "Frame":
    """(type, seq, body) from one frame without its delimiter; ValueError if invalid."""
    raw = cobs_decode(encoded)
    if len(raw) < 4 or len(raw) > MAX_PAYLOAD + 2:
        raise ValueError("frame length out of range")
    payload = raw[:-2]
    if crc16(payload) != (raw[-2] << 8) | raw[-1]:
        raise ValueError("CRC mismatch")
    return payload[0], payload[1], payload[2:]


class Decoder:
    """Turns a byte stream into frames; never raises, resynchronises on 0x00.

    Bad frames (COBS, CRC, length) are dropped and counted; a run of bytes
    longer than any valid frame is discarded up to the next delimiter, so
    garbage can neither block nor grow the buffer. With `known_types`, frames
    of other types are dropped and counted too, as the spec asks.
    """

    def __init__(self, known_types: "Optional[Tuple[int, ...]]" = None) -> None:
        self.buffer = bytearray()
        self.overlong = False
        self.dropped = 0
        self.known_types = known_types

    def feed(self, data: bytes) -> "List[Frame]":
        """The frames completed by `data`; partial frames wait for more bytes."""
        frames = []
        for byte in data:
            if byte:
                if self.overlong:
                    continue
                if len(self.buffer) >= MAX_ENCODED:
                    self.buffer = bytearray()
                    self.overlong = True
                    continue
                self.buffer.append(byte)
                continue
            if self.overlong:
                self.overlong = False
                self.dropped += 1
                continue
            if not self.buffer:
                continue
            encoded = bytes(self.buffer)
            self.buffer = bytearray()
            try:
                frame = decode_frame(encoded)
            except ValueError:
                self.dropped += 1
                continue
            if self.known_types is not None and frame[0] not in self.known_types:
                self.dropped += 1
                continue
            frames.append(frame)
        return frames
