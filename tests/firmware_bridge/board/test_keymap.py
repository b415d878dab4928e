"""Positions to key codes (shift, chords) and back, for the reference model."""

import json
from types import SimpleNamespace

import pytest

from firmware_bridge.board import messages as m
from firmware_bridge.board import model as models
from firmware_bridge.board.firmware import Firmware
from firmware_bridge.board.hal import PicoHal
from firmware_bridge.board.keymap import Keymap
from tests.firmware_bridge.clock import Clock

PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


@pytest.fixture(scope="module")
def model():
    return models.load("brother_ax")


def press(keymap, *names):
    """Press names in order (modifiers first), release all; the codes typed."""
    codes = [keymap.event(keymap.position[n], True) for n in names]
    for n in reversed(names):
        keymap.event(keymap.position[n], False)
    return [c for c in codes if c is not None]


def test_shift_changes_letters_digits_and_punctuation(model):
    k = Keymap(model)
    assert press(k, "a") == [ord("a")]
    assert press(k, "SHIFT", "a") == [ord("A")]
    assert press(k, "SHIFT", "1") == [ord("!")]
    assert press(k, "SHIFT", "'") == [ord('"')]
    assert press(k, "a") == [ord("a")], "shift released"


def test_chords_give_the_function_keys_and_nothing_else(model):
    k = Keymap(model)
    assert press(k, "CODE", "r") == [m.KEY_RESET]
    assert press(k, "CODE", "n") == [m.KEY_NEXT_PERSONA]
    assert press(k, "CODE", "s") == [m.KEY_TOGGLE_SPEECH]
    assert press(k, "CODE", "p") == [m.KEY_REPRINT]
    assert press(k, "CODE", "RETURN") == [m.KEY_SUBMIT]
    assert press(k, "CODE", "x") == [], "Code with another key types nothing"
    assert press(k, "RETURN", "BACKSPACE", "TAB", "SPACE") == [
        m.KEY_RETURN, m.KEY_BACKSPACE, m.KEY_TAB, 0x20]
    assert press(k, "CORRECT") == [], "the typewriter's own keys are not ours"


def test_every_printable_character_and_key_code_has_strokes_that_type_it(model):
    k = Keymap(model)
    codes = [ord(c) for c in PRINTABLE] + [m.KEY_RETURN, m.KEY_BACKSPACE, m.KEY_TAB,
                                           *m.FUNCTION_KEYS]
    for code in codes:
        strokes = k.strokes(code)
        assert strokes, hex(code)
        names = [k.names[p] for p in strokes]
        assert press(k, *names) == [code], (hex(code), names)
        assert all(k.is_modifier(p) for p in strokes[:-1]), "modifiers first"


def test_a_model_file_with_a_mistake_is_named(model, tmp_path):
    bad = dict(model, chords=dict(model["chords"], reset=["CODE", "QQ"]))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(models.ModelError, match="chord reset uses key 'QQ'"):
        models.load(str(path))
    bad = dict(model, timing_ms=dict(model["timing_ms"], hold=-1))
    path.write_text(json.dumps(bad))
    with pytest.raises(models.ModelError, match="timing_ms.hold must be a number >= 0"):
        models.load(str(path))
    bad = dict(model, chords=dict(model["chords"], dance=["CODE", "d"]))
    path.write_text(json.dumps(bad))
    with pytest.raises(models.ModelError, match="unknown chord 'dance': chords are reset, "):
        models.load(str(path))
    with pytest.raises(models.ModelError, match="no typewriter model file"):
        models.load("olivetti_nonexistent")


# -- the layout against the model file, read by hand (issue #18 E) -------------------
# Written once from firmware_bridge/board/typewriters/brother_ax.json by reading it, not
# through Keymap: matrix.layout lists the columns, each top to bottom (rows 0..7), and
# its MT8816 x_address/y_address are 0..7, so crosspoint (X, Y) = (column, row).
BROTHER_AX = {  # key: (column, row)
    "1": (0, 0), "q": (0, 1), "a": (0, 2), "x": (0, 7),
    "e": (1, 1), "v": (1, 7),
    "g": (2, 2), "n": (2, 7),
    "m": (3, 3), ",": (3, 7),
    "p": (4, 5), "/": (4, 7),
    "\\": (5, 5), "`": (5, 6),
    "SPACE": (6, 0), "RETURN": (6, 1), "BACKSPACE": (6, 2), "TAB": (6, 3),
    "SHIFT": (6, 4), "CODE": (6, 5),
}
CODES = {"SPACE": 0x20, "RETURN": m.KEY_RETURN, "BACKSPACE": m.KEY_BACKSPACE,
         "TAB": m.KEY_TAB}


class MatrixHal:
    """A board whose keyboard frame (one int per column, a bit per row) the test sets,
    and whose switch records the MT8816 (X, Y) each close latches, through PicoHal's own
    addressing with recording pins."""

    has_bell = False

    def __init__(self, model):
        self.frame = [0] * model["matrix"]["columns"]
        self.closed = []
        mt = model["pico"]["mt8816"]
        self.latch = SimpleNamespace(
            nrows=model["matrix"]["rows"], x_address=mt["x_address"],
            y_address=mt["y_address"], ax=[Line() for _ in mt["ax"]],
            ay=[Line() for _ in mt["ay"]], data=Line(), strobe=Line(),
            time=SimpleNamespace(sleep_us=lambda us: None))

    def press(self, *keys):
        for key in keys:
            column, row = BROTHER_AX[key]
            self.frame[column] |= 1 << row

    def release(self):
        self.frame = [0] * len(self.frame)

    def scan(self, now):
        return list(self.frame)

    def close(self, position):
        PicoHal._latch(self.latch, position, 1)
        bits = self.latch
        self.closed.append((sum(p.level << i for i, p in enumerate(bits.ax)),
                            sum(p.level << i for i, p in enumerate(bits.ay))))

    def open(self, position):
        pass

    def bell(self):
        pass


class Line:
    def __init__(self):
        self.level = 0

    def value(self, level):
        self.level = level


def typed_by(model, *keys):
    """Close keys at their (column, row) on the scanned matrix: the codes the host gets."""
    hal = MatrixHal(model)
    clock = Clock()
    fw = Firmware(model, hal, clock, boot_id=1)
    for pressed in (True, False):  # 200 ms each: past the model's 85/15 ms debounce
        hal.release()
        if pressed:
            hal.press(*keys)
        for _ in range(40):
            clock.now += 0.005
            fw.scan(clock.now)
    return fw.device.keys.take(64)


@pytest.mark.parametrize("key", [k for k in BROTHER_AX if k not in ("SHIFT", "CODE")])
def test_a_key_at_its_column_and_row_types_its_code(model, key):
    assert typed_by(model, key) == bytes([CODES.get(key, ord(key[0]))])


def test_shift_and_code_at_their_column_and_row(model):
    assert typed_by(model, "SHIFT", "a") == b"A"
    assert typed_by(model, "SHIFT", "1") == b"!"
    assert typed_by(model, "CODE", "RETURN") == bytes([m.KEY_SUBMIT])
    assert typed_by(model, "CODE", "n") == bytes([m.KEY_NEXT_PERSONA])


@pytest.mark.parametrize("key", [k for k in BROTHER_AX if len(k) == 1])
def test_printing_a_character_closes_its_crosspoint(model, key):
    hal = MatrixHal(model)
    fw = Firmware(model, hal, Clock(), boot_id=1)
    fw.injector.poll(0.0, SimpleNamespace(next_print_byte=lambda: ord(key),
                                          printed=lambda byte: None))
    assert hal.closed == [BROTHER_AX[key]]


def test_printing_a_shifted_character_closes_shift_then_its_key(model):
    hal = MatrixHal(model)
    fw = Firmware(model, hal, Clock(), boot_id=1)
    fw.injector.poll(0.0, SimpleNamespace(next_print_byte=lambda: ord("?"),
                                          printed=lambda byte: None))
    assert hal.closed == [BROTHER_AX["SHIFT"], BROTHER_AX["/"]]
