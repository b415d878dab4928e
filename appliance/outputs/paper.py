"""Typesetting for a typewriter: printable ASCII, word wrap, the margin bell.

A typewriter prints a fixed character set on a fixed-width carriage, and
cannot take back a character once struck, so text is only released once a
whole word is known and known to fit.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Optional

from appliance.outputs.base import Output

if TYPE_CHECKING:
    from firmware_bridge.host.link import Link

# Characters NFKD cannot take to ASCII, mapped to what a typist would type.
_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"', "\u2039": "'", "\u203a": "'",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "--", "\u2015": "--",
    "\u2212": "-", "\u2026": "...", "\u2022": "*", "\u00b7": ".", "\u00d7": "x", "\u00f7": "/",
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE",
    "\u00f8": "o", "\u00d8": "O", "\u0142": "l", "\u0141": "L", "\u00f0": "d", "\u00d0": "D",
    "\u00fe": "th", "\u00de": "Th", "\u0131": "i", "\u00a9": "(c)", "\u00ae": "(R)",
    "\u2122": "TM", "\u00b0": " deg", "\u20ac": "EUR", "\u00a3": "GBP", "\u00a1": "!",
    "\u00bf": "?", "\u00a7": "S.", "\u00b6": "P.", "\u2044": "/", "\u2192": "->",
    "\u2190": "<-", "\r": "",
}
BELL = "\x07"


def _printable_char(ch: str) -> str:
    if ch == "\n" or " " <= ch <= "~":
        return ch
    if ch in _MAP:
        return _MAP[ch]
    if ch.isspace():  # tabs, no-break and em spaces, form feeds, U+2028: keep words apart
        return " "
    # NFKD splits accents, ligatures and fractions (1/2 is "1", U+2044, "2") into parts.
    parts = (_MAP.get(c, c) for c in unicodedata.normalize("NFKD", ch))
    return "".join(c for c in "".join(parts) if " " <= c <= "~")


def printable(text: str) -> str:
    """text with every character a typewriter cannot print mapped to ASCII or dropped."""
    return "".join(_printable_char(ch) for ch in text)


class Typesetter:
    """Streams text into print bytes wrapped to the carriage width.

    feed() returns only what is safe to strike now; finish() flushes the last
    word. A word is never split unless it is longer than a whole line. Mid-line
    a word waits until it is complete (it may not fit); at the start of a line
    it is struck as it comes.
    """

    def __init__(self, width: int = 65, bell_margin: int = 8):
        if width < 2:
            raise ValueError("the carriage width must be at least 2 characters")
        self.width = width
        self.bell_at = max(0, width - bell_margin)
        self.column = 0
        self.word = ""
        self.space = False  # a space is due before the next word
        self.streaming = False  # the word being typed started a line and is struck as it comes
        self.rang = False

    def start(self, column: int = 0) -> None:
        """Begin a new piece of text with the carriage at column."""
        self.column = column
        self.word = ""
        self.space = self.streaming = False
        self.rang = column > self.bell_at

    def feed(self, text: str) -> str:
        """The print bytes that text makes safe to strike now (any text: it is made printable)."""
        out = []
        for ch in printable(text):
            if ch == "\n":
                out.append(self._flush_word())
                out.append(self._newline())
                self.space = self.streaming = False
            elif ch == " ":
                out.append(self._flush_word())
                self.space = self.column > 0
                self.streaming = False
            elif self.column == 0 or self.streaming:
                # A word that starts a line fits (or is broken hard anyway): strike it
                # as it comes, so the first words of a reply need not wait for the next.
                self.streaming = True
                if self.column == self.width:
                    out.append(self._newline())
                out.append(self._strike(ch))
            else:
                self.word += ch
                if len(self.word) > self.width:  # longer than a line: break it hard
                    out.append(self._flush_word(hard=True))
        return "".join(out)

    def finish(self) -> str:
        """The end of the text: strike the word still held back (no newline is added)."""
        out = self._flush_word()
        self.space = False
        return out

    def _newline(self) -> str:
        self.column = 0
        self.rang = False
        return "\n"

    def _flush_word(self, hard: bool = False) -> str:
        if not self.word:
            return ""
        out = []
        word, self.word = self.word, ""
        if hard:
            word, self.word = word[: self.width], word[self.width :]
        need = len(word) + (1 if self.space else 0)
        if self.column + need > self.width and self.column > 0:
            out.append(self._newline())
            self.space = False
        if self.space:
            out.append(self._strike(" "))
        for ch in word:
            out.append(self._strike(ch))
        self.space = False
        return "".join(out)

    def _strike(self, ch: str) -> str:
        self.column += 1
        if not self.rang and self.column > self.bell_at:
            self.rang = True
            return BELL + ch
        return ch


class NoPaper(Output):
    """A typewriter with no print mechanism: nothing is struck, nothing is owed."""

    start = 0
    sent = 0
    struck = 0


class Paper(Output):
    """The typewriter's paper: replies wrapped to the carriage and struck through the link.

    It keeps the reply's print accounting (`start`, `sent`, `struck`), which the
    journal records so a restart knows what is already on the paper.
    """

    def __init__(self, typewriter: Link, width: int = 65):
        super().__init__()
        self.typewriter = typewriter
        self.typesetter = Typesetter(width=width)
        self.at_line_start = True
        self.start = 0  # the typewriter's printed counter when the reply began
        self.sent = 0  # print bytes of the reply handed to the link so far
        self.mark = 0  # where on the paper the latest piece starts (the voice paces to it)
        # Keys struck after the reply began and before its first word: the firmware holds
        # keys only once printing starts, so these moved the carriage off the line start.
        self._typed_ahead: Optional[bool] = None  # None: no reply waiting for its first word

    @property
    def struck(self) -> int:
        """Print bytes of the reply the typewriter has struck."""
        return (self.typewriter.printed - self.start) % 2**32

    def typed(self, code: int) -> None:
        self.at_line_start = code == 0x0A
        if self._typed_ahead is not None:
            self._typed_ahead = not self.at_line_start

    def reply_started(self) -> None:
        # Exact when the typewriter is idle at submit, which it is unless it is still
        # printing something earlier.
        self.start, self.sent, self.mark = self.typewriter.printed, 0, 0
        if not self.at_line_start:
            self.typewriter.print_text("\n")
        self.typesetter.start(0)
        self._typed_ahead = False

    def reply_piece(self, piece: str) -> None:
        self.mark = self.sent
        self._strike(self.typesetter.feed(piece))

    def reply_ended(self) -> None:
        self._strike(self.typesetter.finish())
        self._typed_ahead = None
        self.typewriter.print_text("\n\n")
        self.at_line_start = True

    def _strike(self, out: str) -> None:
        if not out:
            return
        if self._typed_ahead:  # the reply's first line starts where the typesetter thinks
            self.typewriter.print_text("\n")
        self._typed_ahead = None
        self.typewriter.print_text(out)
        self.sent += len(out)

    def line(self, text: str) -> None:
        self.typesetter.start(0)
        prefix = "" if self.at_line_start else "\n"
        body = self.typesetter.feed(text) + self.typesetter.finish()
        self.typewriter.print_text(prefix + body + "\n\n")
        self.at_line_start = True

    def stop(self) -> None:
        self.typewriter.cancel()

    @property
    def idle(self) -> bool:
        return self.typewriter.unprinted == 0
