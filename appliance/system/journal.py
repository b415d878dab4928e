"""The transcript journal: SQLite (WAL) in the state directory.

Keys are the source of truth. Each batch the typewriter sends is committed,
with the firmware's boot_id and the frame's sequence number, *before* it is
acknowledged on the wire, so a key the typewriter was told we have is never
lost, and after a restart a retransmitted batch is known for a duplicate.
A submitted message records the last key it consumed (its batch, and how many
of that batch's keys); keys after that are the line in progress, replayed into
the line editor after a crash.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from appliance.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS link (
    id INTEGER PRIMARY KEY CHECK (id = 1), boot_id INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, boot_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    codes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, conversation INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'character')), text TEXT NOT NULL,
    last_key INTEGER, last_offset INTEGER, done INTEGER NOT NULL DEFAULT 0,
    printed INTEGER NOT NULL DEFAULT 0,   -- characters of text struck on paper
    print_start INTEGER, print_bytes INTEGER);  -- typewriter counter at start, bytes sent
CREATE TABLE IF NOT EXISTS conversations (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""


class JournalError(UserError):
    """The state directory or its database cannot be used; the message names the fix."""


class Journal:
    """One appliance's durable transcript.

    Two connections: keys are written from the serial link's thread with
    `synchronous=FULL` (durable before the ACK); turns from the appliance's
    loop with `NORMAL` (a reply being typed can be regenerated, and an fsync
    per token would wear an SD card).
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / "transcript.sqlite3"
        try:
            Path(state_dir).mkdir(parents=True, exist_ok=True)
            self._keys = self._connect("FULL")
            self._turns = self._connect("NORMAL")
            with self._turns:
                self._turns.executescript(SCHEMA)
                columns = {row[1] for row in self._turns.execute("PRAGMA table_info(turns)")}
                if "last_offset" not in columns:  # a journal written before keys were counted
                    self._turns.execute("ALTER TABLE turns ADD COLUMN last_offset INTEGER")
                if self._turns.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 0:
                    self._turns.execute("INSERT INTO conversations (at) VALUES (?)", (time.time(),))
        except (OSError, sqlite3.Error) as e:
            raise JournalError(
                f"cannot use the state directory {state_dir} ({e}): make it writable by the "
                "appliance's user, or pass another with --state-dir"
            ) from e
        self._lock = threading.Lock()

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def close(self) -> None:
        self._keys.close()
        self._turns.close()

    # -- keys (the link's thread) --------------------------------------------------------

    def accept_keys(self, boot_id: int, seq: int, codes: bytes) -> int:
        """Commit a batch of keys and the link state together; returns the batch's row id.

        One transaction: killed between the two, the keys would be kept with the old
        sequence number, and the typewriter's resend of the batch taken as new keys.
        """
        with self._lock:
            self._keys.execute("BEGIN IMMEDIATE")
            try:
                cur = self._keys.execute(
                    "INSERT INTO keys (at, boot_id, seq, codes) VALUES (?, ?, ?, ?)",
                    (time.time(), boot_id, seq, bytes(codes)),
                )
                self._keys.execute(
                    "INSERT INTO link (id, boot_id, seq) VALUES (1, ?, ?) ON CONFLICT (id) "
                    "DO UPDATE SET boot_id = excluded.boot_id, seq = excluded.seq",
                    (boot_id, seq),
                )
            except BaseException:
                self._keys.execute("ROLLBACK")
                raise
            self._keys.execute("COMMIT")
            return cur.lastrowid

    def link_state(self) -> Optional[Tuple[int, int]]:
        """(firmware boot_id, last accepted seq), to resume duplicate detection."""
        row = self._turns.execute("SELECT boot_id, seq FROM link WHERE id = 1").fetchone()
        return (row[0], row[1]) if row else None

    def unconsumed_keys(self) -> List[Tuple[int, int, bytes]]:
        """Keys no submitted message has consumed yet, the line in progress:
        (batch, offset of the first key in its batch, codes), oldest first."""
        row = self._turns.execute(
            "SELECT last_key, last_offset FROM turns WHERE last_key IS NOT NULL "
            "ORDER BY last_key DESC, last_offset IS NULL DESC, last_offset DESC "
            "LIMIT 1").fetchone()
        batch, offset = row if row else (0, None)
        keys = []
        for key_id, codes in self._turns.execute(
                "SELECT id, codes FROM keys WHERE id >= ? ORDER BY id", (batch,)):
            start = 0
            if key_id == batch:  # the batch the last message came from: what followed it
                start = len(codes) if offset is None else offset
            if start < len(codes):
                keys.append((key_id, start, bytes(codes[start:])))
        return keys

    def last_key_id(self) -> int:
        row = self._turns.execute("SELECT MAX(id) FROM keys").fetchone()
        return row[0] or 0

    # -- turns (the appliance's loop) -----------------------------------------------------

    @property
    def conversation(self) -> int:
        return self._turns.execute("SELECT MAX(id) FROM conversations").fetchone()[0]

    def new_conversation(self) -> None:
        with self._turns:
            self._turns.execute("INSERT INTO conversations (at) VALUES (?)", (time.time(),))

    def user_turn(self, message: str, last_key: int, offset: Optional[int] = None) -> None:
        """A submitted message, consuming its batch's first `offset` keys (None: all)."""
        with self._turns:
            self._turns.execute(
                "INSERT INTO turns (at, conversation, role, text, last_key, last_offset, done) "
                "VALUES (?, ?, 'user', ?, ?, ?, 1)", (time.time(), self.conversation, message,
                                                      last_key, offset))

    def reply_started(self) -> int:
        with self._turns:
            cur = self._turns.execute(
                "INSERT INTO turns (at, conversation, role, text) VALUES (?, ?, 'character', '')",
                (time.time(), self.conversation))
            return cur.lastrowid

    def reply_text(self, turn: int, text: str, start: int, sent: int,
                   done: bool = False) -> None:
        """The reply so far, with what a restart needs to go on measuring its printing
        (the typewriter's counter at its start, the bytes sent), written together."""
        with self._turns:
            self._turns.execute(
                "UPDATE turns SET text = ?, done = ?, print_start = ?, print_bytes = ? "
                "WHERE id = ?", (text, int(done), start, sent, turn))

    def reply_printed(self, turn: int, printed: int, start: int, sent: int) -> None:
        """How much of a reply is on paper, and what it takes to go on measuring it
        after a restart (the typewriter's counter at its start, the bytes sent)."""
        with self._turns:
            self._turns.execute(
                "UPDATE turns SET printed = ?, print_start = ?, print_bytes = ? WHERE id = ?",
                (printed, start, sent, turn))

    def printing(self) -> Optional[Tuple[int, str, int, int, int]]:
        """The last reply, if the paper has not caught up with it:
        (turn, text, printed, print_start, print_bytes)."""
        row = self._turns.execute(
            "SELECT id, text, printed, print_start, print_bytes FROM turns "
            "WHERE role = 'character' ORDER BY id DESC LIMIT 1").fetchone()
        if row and row[3] is not None and row[2] < len(row[1]):
            return row
        return None

    def exchanges(self) -> List[Tuple[str, str]]:
        """The current conversation's finished exchanges, oldest first."""
        rows = self._turns.execute(
            "SELECT role, text, done FROM turns WHERE conversation = ? ORDER BY id",
            (self.conversation,)).fetchall()
        pairs: List[Tuple[str, str]] = []
        pending = None
        for role, text, done in rows:
            if role == "user":
                pending = text
            elif pending is not None and done:
                pairs.append((pending, text))
                pending = None
        return pairs

    def unanswered(self) -> Optional[str]:
        """A message submitted before a crash whose reply never finished."""
        row = self._turns.execute(
            "SELECT role, text, done FROM turns WHERE conversation = ? ORDER BY id DESC LIMIT 1",
            (self.conversation,)).fetchone()
        if row and row[0] == "user":
            return row[1]
        if row and row[0] == "character" and not row[2]:
            prev = self._turns.execute(
                "SELECT text FROM turns WHERE conversation = ? AND role = 'user' "
                "ORDER BY id DESC LIMIT 1", (self.conversation,)).fetchone()
            return prev[0] if prev else None
        return None

    def turns(self, since: float = 0.0) -> Iterator[Dict[str, object]]:
        for turn_id, at, conv, role, text, done, printed in self._turns.execute(
                "SELECT id, at, conversation, role, text, done, printed FROM turns "
                "WHERE at >= ? ORDER BY id", (since,)):
            yield {"id": turn_id, "at": at, "conversation": conv, "role": role, "text": text,
                   "done": bool(done),
                   # The person's turn is on the paper as typed; a reply as far as struck.
                   "printed": len(text) if role == "user" else printed}


def export(journal: Journal, since: float, fmt: str) -> str:
    """The transcript as text (a play script) or JSON lines (one object per turn)."""
    turns = list(journal.turns(since))
    if fmt == "json":
        return "".join(json.dumps(t) + "\n" for t in turns)
    lines = []
    conv = None
    for t in turns:
        if t["conversation"] != conv:
            conv = t["conversation"]
            lines.append(f"-- conversation {conv}, "
                         f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(t['at']))} --")
        mark = "" if t["done"] else " [unfinished]"
        if t["role"] == "character" and t["done"] and t["printed"] < len(t["text"]):
            mark += f" [printed {t['printed']} of {len(t['text'])} characters]"
        lines.append(f"{'YOU' if t['role'] == 'user' else 'CHARACTER'}: {t['text']}{mark}")
    return "\n".join(lines) + ("\n" if lines else "")
