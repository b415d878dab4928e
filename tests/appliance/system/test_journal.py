"""The transcript journal: keys kept before they are acknowledged, restored after a crash."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from appliance.system.journal import Journal, JournalError, export
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import SCRIPT_REPLY, typewriter, wait_for


def test_keys_and_link_state_survive_a_reopen(tmp_path):
    j = Journal(tmp_path)
    first = j.accept_keys(0xAB, 7, b"Hel")
    j.accept_keys(0xAB, 8, b"lo")
    j.close()
    j = Journal(tmp_path)
    assert j.link_state() == (0xAB, 8)
    assert j.unconsumed_keys() == [(first, 0, b"Hel"), (first + 1, 0, b"lo")]


def test_keys_and_link_state_commit_together(tmp_path):
    """A batch stored with a stale sequence number would be accepted again on resend."""
    journal = Journal(tmp_path)
    journal.accept_keys(7, 1, b"ab")
    journal._keys.execute("ALTER TABLE link RENAME TO gone")  # the second write now fails
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        journal.accept_keys(7, 2, b"cd")
    journal._keys.execute("ALTER TABLE gone RENAME TO link")
    assert journal.unconsumed_keys() == [(1, 0, b"ab")] and journal.link_state() == (7, 1)
    journal.close()


def test_a_submitted_message_consumes_its_keys(tmp_path):
    j = Journal(tmp_path)
    j.accept_keys(1, 0, b"Hi\n\n")
    j.user_turn("Hi", j.last_key_id())
    batch = j.accept_keys(1, 1, b"nex")
    assert j.unconsumed_keys() == [(batch, 0, b"nex")]
    assert j.unanswered() == "Hi"
    turn = j.reply_started()
    j.reply_text(turn, "Good", 0, 4)
    assert j.unanswered() == "Hi", "a reply cut off by a crash is answered again"
    j.reply_text(turn, "Good morrow.", 0, 12, done=True)
    assert j.unanswered() is None
    assert j.exchanges() == [("Hi", "Good morrow.")]
    j.new_conversation()
    assert j.exchanges() == []


def test_keys_after_a_submit_in_the_same_batch_survive_a_crash(tmp_path):
    """A resent batch often holds a Return Return and the start of the next line: the
    submit consumes only the keys up to it, never the ones typed after it."""
    j = Journal(tmp_path)
    batch = j.accept_keys(1, 0, b"Hi\n\nnext")
    j.user_turn("Hi", batch, 4)  # the 4th key of the batch, the second Return, submitted it
    j.close()
    j = Journal(tmp_path)
    assert j.unconsumed_keys() == [(batch, 4, b"next")]
    later = j.accept_keys(1, 1, b" one")
    assert j.unconsumed_keys() == [(batch, 4, b"next"), (later, 0, b" one")]
    j.user_turn("next one", later, 4)
    assert j.unconsumed_keys() == []
    j.close()


def test_export_text_and_json(tmp_path):
    j = Journal(tmp_path)
    j.user_turn("Hi", 0)
    turn = j.reply_started()
    j.reply_text(turn, "Good morrow.", 0, 12, done=True)
    j.reply_printed(turn, 5, 100, 13)
    assert "Good morrow. [printed 5 of 12 characters]" in export(j, 0, "text")
    assert j.printing() == (turn, "Good morrow.", 5, 100, 13)
    j.reply_printed(turn, 12, 100, 13)
    assert j.printing() is None
    lines = [json.loads(line) for line in export(j, 0, "json").splitlines()]
    assert [(t["role"], t["text"], t["done"], t["printed"]) for t in lines] == [
        ("user", "Hi", True, 2), ("character", "Good morrow.", True, 12)]
    assert "YOU: Hi\nCHARACTER: Good morrow.\n" in export(j, 0, "text")
    assert export(j, time.time() + 60, "json") == ""


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(JournalError, match="state directory"):
        Journal(blocker / "state")
    result = typewriter("transcript", "--state-dir", str(tmp_path / "empty"))
    assert result.returncode == 2 and "no transcript" in result.stderr


def start_run(port, persona, state):
    return subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "run", "--port", port, "--persona",
         str(persona), "--state-dir", str(state), "--control", str(state.parent / "c.sock")],
        stderr=subprocess.PIPE, text=True)


def transcript(state):
    out = typewriter("transcript", "--state-dir", str(state), "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines()]


def test_sigkill_while_typing_and_while_replying_loses_nothing(script_persona, tmp_path):
    state = tmp_path / "state"
    with SimulatedTypewriter(cps=2000, cr_seconds=0) as sim:
        port = sim.start()
        app = start_run(port, script_persona, state)
        try:
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: "home." in sim.paper.text(), 60)
            # Killed in the middle of typing: what was acknowledged must come back.
            sim.type_text("half a li")
            assert wait_for(lambda: not sim.device.keys and not sim.device.session.pending, 10)
            os.kill(app.pid, signal.SIGKILL)
            app.wait()
            sim.type_text("ne\n\n")  # typed while the appliance is down
            app = start_run(port, script_persona, state)
            assert wait_for(lambda: sim.paper.text().count("home.") == 2, 60)
            # Killed in the middle of a reply: the message is answered again.
            sim.cps = 10
            sim.type_text("Third\n\n")
            assert wait_for(lambda: "Good" in sim.paper.text().partition("Third")[2], 30)
            os.kill(app.pid, signal.SIGKILL)
            app.wait()
            sim.cps = 2000
            app = start_run(port, script_persona, state)
            assert wait_for(lambda: sim.paper.text().partition("Third")[2].count("home.") >= 1, 60)
            # The typewriter went on printing from its own buffer while the appliance was
            # down; the restarted appliance goes on measuring, so every reply ends up shown
            # as fully printed.
            assert wait_for(lambda: all(r["printed"] == len(r["text"]) for r in
                                        transcript(state) if r["role"] == "character"), 30)
        finally:
            app.terminate()
            app.wait(10)
    turns = transcript(state)
    users = [t["text"] for t in turns if t["role"] == "user"]
    assert users == ["Hello", "half a line", "Third"], "no key lost or doubled"
    replies = [t for t in turns if t["role"] == "character"]
    assert [r["text"] for r in replies if r["done"]] == [SCRIPT_REPLY] * 3
