"""Dialogue readers: the formats people have scripts in, as one list of speeches.

- play: a `NAME:` line, then the speech on the lines below, a blank line between
  speeches (as in the Tiny Shakespeare corpus);
- lines: one `NAME: speech` per line (chat logs, transcripts);
- fountain: a Fountain screenplay (an upper-case character cue, the dialogue
  below it; scene headings, action, transitions and notes are not speech).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from appliance.persona.build import BuildError

# A speaker's name: a letter, then letters, digits, spaces and .,'&- (40 characters at most).
_NAME = r"[A-Za-z][A-Za-z0-9 .,'&\-]{0,39}"
_PLAY_CUE = re.compile(rf"^({_NAME}):\s*$")
_LINE = re.compile(rf"^({_NAME}):\s+(\S.*)$")
_CUE = re.compile(r"^@?([A-Z][A-Z0-9 .'\-]*?)\s*(\(.*\))?\s*\^?$")
_HEADING = re.compile(r"^(INT|EXT|EST|INT\./EXT|I/E)[. ]", re.IGNORECASE)


@dataclass(frozen=True)
class Speech:
    speaker: str
    text: str  # one line: the speech's lines joined with spaces
    line: int  # where the speech starts in its file, from 1


@dataclass(frozen=True)
class Script:
    path: Path
    format: str
    speeches: Tuple[Speech, ...]

    def counts(self) -> Counter:
        return Counter(s.speaker for s in self.speeches)

    def speaker(self, name: str) -> str:
        """The speaker's name as the script spells it; raises BuildError if absent."""
        spelled = {s.upper(): s for s in self.counts()}
        if name.strip().upper() not in spelled:
            top = ", ".join(f"{n} ({c})" for n, c in self.counts().most_common(5))
            raise BuildError(f"{self.path}: {name!r} has no lines in this {self.format} script "
                             f"(most lines: {top}); pass --character with one of those names")
        return spelled[name.strip().upper()]


def _join(lines: List[str]) -> str:
    return " ".join(" ".join(lines).split())


def read_play(lines: List[str]) -> List[Speech]:
    speeches: List[Speech] = []
    speaker, start, body = "", 0, []

    def flush() -> None:
        if speaker and body:
            speeches.append(Speech(speaker, _join(body), start))

    for number, line in enumerate(lines, 1):
        cue = _PLAY_CUE.match(line)
        if cue and (number == 1 or not lines[number - 2].strip()):
            flush()
            speaker, start, body = cue.group(1).strip(), number, []
        elif not line.strip():
            flush()
            speaker, body = "", []
        elif speaker:
            body.append(line)
        else:
            raise _unknown(number, line, "play", "a `NAME:` line before the speech")
    flush()
    return speeches


def read_lines(lines: List[str]) -> List[Speech]:
    speeches = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        if not match:
            raise _unknown(number, line, "lines", "`NAME: speech` on every line")
        speeches.append(Speech(match.group(1).strip(), _join([match.group(2)]), number))
    return speeches


def read_fountain(lines: List[str]) -> List[Speech]:
    speeches: List[Speech] = []
    text = "\n".join(lines)
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"\[\[.*?\]\]", "", text, flags=re.S)
    lines = text.split("\n")
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        before_blank = number == 0 or not lines[number - 1].strip()
        cue = _CUE.match(line) if before_blank and ":" not in line else None
        if (cue and any(c.isalpha() for c in cue.group(1)) and not _HEADING.match(line)
                and number + 1 < len(lines) and lines[number + 1].strip()):
            body, start = [], number + 1
            number += 1
            while number < len(lines) and lines[number].strip():
                part = lines[number].strip()
                if not (part.startswith("(") and part.endswith(")")):  # parenthetical
                    body.append(part)
                number += 1
            if body:
                speeches.append(Speech(cue.group(1).strip(), _join(body), start))
        number += 1
    return speeches


READERS: Dict[str, Callable[[List[str]], List[Speech]]] = {
    "play": read_play, "lines": read_lines, "fountain": read_fountain}


def _unknown(number: int, line: str, fmt: str, want: str) -> BuildError:
    shown = line.strip()[:40]
    return BuildError(f"{number}: {shown!r} is not {fmt} format (it needs {want})")


def detect(path: Path, lines: List[str]) -> str:
    """The format of a script, from its name (.fountain) or its first speech."""
    if path.suffix.lower() in (".fountain", ".spmd"):
        return "fountain"
    first = next((line.strip() for line in lines if line.strip()), "")
    if re.match(r"^(Title|Credit|Author|Draft date)\s*:", first, re.I) or _HEADING.match(first):
        return "fountain"
    if _PLAY_CUE.match(first):
        return "play"
    if _LINE.match(first):
        return "lines"
    raise BuildError(f"{path}:1: unknown dialogue format (starts {first[:40]!r}): use a play "
                     "(a `NAME:` line, then the speech), one `NAME: speech` per line, or a "
                     ".fountain screenplay")


def read(path: Path, fmt: str = "auto") -> Script:
    """Read a dialogue file; raises BuildError naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BuildError(f"{path}: no such file: pass the dialogue file with --dialogue") from None
    except UnicodeDecodeError as e:
        raise BuildError(f"{path}: not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except OSError as e:
        raise BuildError(f"{path}: cannot read it ({e.strerror})") from None
    lines = text.splitlines()
    fmt = detect(path, lines) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise BuildError(f"unknown --format {fmt!r}: use auto, {', '.join(READERS)}")
    try:
        speeches = READERS[fmt](lines)
    except BuildError as e:
        raise BuildError(f"{path}:{e}") from None
    if not speeches:
        raise BuildError(f"{path}: no speeches found in this {fmt} script: check its format")
    return Script(path, fmt, tuple(speeches))
