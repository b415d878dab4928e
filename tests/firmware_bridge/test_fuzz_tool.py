"""tools/fuzz_session.py at a small scale: it runs clean on today's code, and it catches
a session that loses state to garbage (a broken ACK check)."""

import importlib.util
import json
from pathlib import Path

import pytest

from firmware_bridge.board import messages as m
from firmware_bridge.board.session import Session

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz_session.py"


@pytest.fixture(scope="module")
def fuzz_tool():
    spec = importlib.util.spec_from_file_location("fuzz_session", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_small_run_is_clean_and_reports_json(fuzz_tool, capsys):
    assert fuzz_tool.main(["--frames", "3000", "--seed", "7", "--window", "500"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["frames"] == 3000 and result["clean_exchanges"] == 6
    assert all(result["kinds"].values()), "every kind of garbage was fed"


def test_it_catches_a_session_that_takes_any_ack(fuzz_tool, monkeypatch, capsys):
    frame = Session._frame

    def any_ack_clears(self, ftype, seq, body, events):
        if ftype == m.ACK and self.in_flight is not None:
            seq = self.in_flight[0]
        return frame(self, ftype, seq, body, events)

    monkeypatch.setattr(Session, "_frame", any_ack_clears)
    assert fuzz_tool.main(["--frames", "3000", "--seed", "7", "--window", "500"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert not result["ok"] and ("keys" in result["error"] or "print" in result["error"])
