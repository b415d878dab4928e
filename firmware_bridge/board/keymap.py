"""Key positions to protocol key codes and back, from a typewriter model.

Runs unchanged on CPython and MicroPython. A position is an index,
column * rows + row, into the model's matrix.layout.
"""

from firmware_bridge.board import messages as m

try:
    from typing import Dict, Optional, Tuple
except ImportError:  # MicroPython: annotations are never evaluated
    pass

SHIFT = "SHIFT"
CODE = "CODE"
MODIFIERS = (SHIFT, CODE)
SPECIAL = {"SPACE": 0x20, "RETURN": m.KEY_RETURN, "BACKSPACE": m.KEY_BACKSPACE,
           "TAB": m.KEY_TAB}
FUNCTIONS = {"reset": m.KEY_RESET, "next_persona": m.KEY_NEXT_PERSONA,
             "toggle_speech": m.KEY_TOGGLE_SPEECH, "reprint": m.KEY_REPRINT,
             "submit": m.KEY_SUBMIT}


class Keymap:
    """Turns press/release events into key codes, and codes into the keys that type them.

    Shift and Code are modifiers: held, they change what the next key means.
    Code plus a chord key gives a function key (reset, submit, ...); Code plus
    any other key gives nothing, so a slip never types a stray character.
    """

    def __init__(self, model: "Dict") -> None:
        matrix = model["matrix"]
        self.rows = matrix["rows"]
        self.names = []
        for col in matrix["layout"]:
            self.names.extend(col)
        self.position = {}
        for index, name in enumerate(self.names):
            if name is not None:
                self.position[name] = index
        self.shift_layer = model["shift"]
        self.chords = {}  # key name under Code -> function code
        for function, keys in model["chords"].items():
            key = [k for k in keys if k not in MODIFIERS][0]
            self.chords[key] = FUNCTIONS[function]
        self.held = {SHIFT: False, CODE: False}
        self.strokes_for = {}  # code -> positions, modifiers first
        for index, name in enumerate(self.names):
            if name is None or name in MODIFIERS:
                continue
            for shift in (False, True):
                code = self.code(name, shift, False)
                if code is not None and code not in self.strokes_for:
                    self.strokes_for[code] = ((self.position[SHIFT], index) if shift
                                              else (index,))
            if name in self.chords:
                self.strokes_for[self.chords[name]] = (self.position[CODE], index)

    def code(self, name: str, shift: bool, code_held: bool) -> "Optional[int]":
        """The key code for key `name` with these modifiers held, or None."""
        if code_held:
            return self.chords.get(name)
        if name in SPECIAL:
            return SPECIAL[name]
        if len(name) != 1:
            return None  # the typewriter's own keys (correction, margins): not ours
        if shift:
            name = self.shift_layer.get(name, name.upper())
        return ord(name)

    def event(self, index: int, pressed: bool) -> "Optional[int]":
        """A debounced change at a position: the key code it types, if any."""
        name = self.names[index]
        if name is None:
            return None
        if name in MODIFIERS:
            self.held[name] = pressed
            return None
        if not pressed:
            return None
        return self.code(name, self.held[SHIFT], self.held[CODE])

    def strokes(self, code: int) -> "Tuple[int, ...]":
        """The positions to close together to type code, modifiers first; () if none."""
        return self.strokes_for.get(code, ())

    def is_modifier(self, index: int) -> bool:
        return self.names[index] in MODIFIERS
