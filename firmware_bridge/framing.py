"""Frames on the wire: COBS( payload || CRC16 ) || 0x00.

Runs unchanged on CPython and MicroPython: the firmware imports this file.
"""

MAX_PAYLOAD = 64
MAX_BODY = MAX_PAYLOAD - 2
# The longest valid encoded frame: payload + CRC, plus COBS overhead, without the delimiter.
MAX_ENCODED = MAX_PAYLOAD + 2 + (MAX_PAYLOAD + 2) // 254 + 1


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_TABLE = _crc_table()


def crc16(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE (MicroPython's binascii has no crc_hqx)."""
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ byte]
    return crc


def cobs_encode(data):
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


def cobs_decode(data):
    """Undo cobs_encode; ValueError for anything cobs_encode could not have made."""
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
    return bytes(out)


def encode_frame(ftype, seq, body=b""):
    """The complete wire bytes of one frame, delimiter included."""
    if len(body) > MAX_BODY:
        raise ValueError("frame body longer than 62 bytes")
    payload = bytes([ftype & 0xFF, seq & 0xFF]) + bytes(body)
    crc = crc16(payload)
    return cobs_encode(payload + bytes([crc >> 8, crc & 0xFF])) + b"\x00"


def decode_frame(encoded):
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
    garbage can neither block nor grow the buffer.
    """

    def __init__(self, known_types=None):
        self.buffer = bytearray()
        self.overlong = False
        self.dropped = 0
        self.known_types = known_types

    def feed(self, data):
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
