"""A typewriter model: its keyboard matrix, charmap, timings and pins, as data.

Models live in typewriters/NAME.json beside this file (one per typewriter).
Runs unchanged on CPython and MicroPython: the firmware loads its model at boot.
"""

import json

try:
    from typing import Dict
except ImportError:  # MicroPython: annotations are never evaluated
    pass

CHORDS = ("reset", "next_persona", "toggle_speech", "reprint", "submit")
TIMINGS = ("hold", "release", "char", "cr", "cr_per_column", "lf", "debounce_press",
           "debounce_release", "scan")


class ModelError(Exception):
    """A model file is missing or inconsistent; the message names the field to fix."""


def models_dir() -> str:
    return __file__.rsplit("/", 1)[0] + "/typewriters"


def load(name: str = "brother_ax") -> "Dict":
    """The model called name (typewriters/NAME.json), or a path ending in .json."""
    path = name if name.endswith(".json") else models_dir() + "/" + name + ".json"
    try:
        with open(path) as f:
            model = json.load(f)
    except OSError:
        raise ModelError("no typewriter model file " + path + ": check the name") from None
    except ValueError as e:
        raise ModelError("typewriter model " + path + " is not valid JSON: " + str(e)) from None
    check(model, path)
    return model


def check(model: "Dict", where: str = "model") -> None:
    """Raise ModelError naming the first field a firmware could not run with."""
    for field in ("name", "matrix", "shift", "chords", "timing_ms"):
        if field not in model:
            raise ModelError(where + ": missing field " + repr(field))
    matrix = model["matrix"]
    layout = matrix.get("layout", [])
    if len(layout) != matrix.get("columns") or any(
            len(col) != matrix.get("rows") for col in layout):
        raise ModelError(where + ": matrix.layout must be `columns` lists of `rows` key names")
    names = [key for col in layout for key in col if key is not None]
    for name in names:
        if names.count(name) > 1:
            raise ModelError(where + ": key " + repr(name) + " appears twice in matrix.layout")
    for name in ("SHIFT", "CODE"):
        if name not in names:
            raise ModelError(where + ": matrix.layout has no " + name + " key")
    for chord, keys in model["chords"].items():
        if chord not in CHORDS:
            raise ModelError(where + ": unknown chord " + repr(chord) + ": chords are "
                             + ", ".join(CHORDS))
        if len([key for key in keys if key not in ("SHIFT", "CODE")]) != 1:
            raise ModelError(where + ": chord " + chord + " must name one key besides "
                             "SHIFT or CODE")
        for key in keys:
            if key not in names:
                raise ModelError(where + ": chord " + chord + " uses key " + repr(key)
                                 + ", which is not in matrix.layout")
    for base in model["shift"]:
        if base not in names:
            raise ModelError(where + ": shift layer names key " + repr(base)
                             + ", which is not in matrix.layout")
    for field in TIMINGS:
        value = model["timing_ms"].get(field)
        if not isinstance(value, (int, float)) or value < 0:
            raise ModelError(where + ": timing_ms." + field + " must be a number >= 0")


class Timing:
    """The model's timings in seconds (the file says milliseconds)."""

    def __init__(self, timing_ms: "Dict") -> None:
        self.hold = timing_ms["hold"] / 1000
        self.release = timing_ms["release"] / 1000
        self.char = timing_ms["char"] / 1000
        self.cr = timing_ms["cr"] / 1000
        self.cr_per_column = timing_ms["cr_per_column"] / 1000
        self.lf = timing_ms["lf"] / 1000
        self.debounce_press = timing_ms["debounce_press"] / 1000
        self.debounce_release = timing_ms["debounce_release"] / 1000
        self.scan = timing_ms["scan"] / 1000
