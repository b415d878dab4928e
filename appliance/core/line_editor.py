"""Key codes in, the message being typed out.

The paper already shows what was typed (the typewriter printed it); this
keeps the same text as the appliance understands it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from firmware_bridge.board import messages as m

FUNCTIONS = {
    m.KEY_RESET: "reset",
    m.KEY_NEXT_PERSONA: "next_persona",
    m.KEY_TOGGLE_SPEECH: "toggle_speech",
    m.KEY_REPRINT: "reprint",
}


class Event(NamedTuple):
    """What a key did: "edit" and "submit" carry the message; function keys carry nothing."""

    kind: str  # edit, submit, reset, next_persona, toggle_speech, reprint
    text: str = ""


class LineEditor:
    """Backspace, tab and return; two returns (or the submit key) send the message.

    With double_return off only the submit key sends, for people who leave
    blank lines in what they type.
    """

    def __init__(self, initial: str = "", double_return: bool = True):
        self.typed = initial
        self.double_return = double_return
        self.ignored = 0

    @property
    def text(self) -> str:
        """The message as it would be sent now: lines joined, spaces collapsed."""
        return " ".join(self.typed.split())

    def load(self, text: str) -> None:
        """Restore a line in progress (after a restart)."""
        self.typed = text

    def press(self, code: int) -> Optional[Event]:
        """One key code from the typewriter; None when it changed nothing worth telling."""
        if 0x20 <= code <= 0x7E:
            self.typed += chr(code)
        elif code == m.KEY_TAB:
            self.typed += " "
        elif code == m.KEY_BACKSPACE:
            self.typed = self.typed[:-1]
        elif code == m.KEY_RETURN:
            if self.double_return and (self.typed.endswith("\n") or not self.typed):
                return self._submit()
            self.typed += "\n"
        elif code == m.KEY_SUBMIT:
            return self._submit()
        elif code in FUNCTIONS:
            if code == m.KEY_RESET:
                self.typed = ""
            return Event(FUNCTIONS[code])
        else:
            self.ignored += 1
            return None
        return Event("edit", self.text)

    def _submit(self) -> Optional[Event]:
        message = self.text
        self.typed = ""
        return Event("submit", message) if message else None
