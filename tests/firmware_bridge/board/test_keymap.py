"""Positions to key codes (shift, chords) and back, for the reference model."""

import json

import pytest

from firmware_bridge.board import messages as m
from firmware_bridge.board import model as models
from firmware_bridge.board.keymap import Keymap

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
