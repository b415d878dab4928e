"""The whole path: keys typed on a simulated typewriter over a pty, a reply from
llama.cpp, printed back onto the simulated paper through the wire protocol."""

import re
import subprocess
import sys
import time

from appliance.outputs.paper import printable
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import SCRIPT_REPLY, typewriter

PRINTABLE_PAPER = re.compile(r"^[\x20-\x7e\n]*$")


def reply_lines(paper: str, typed: str) -> list:
    lines = paper.splitlines()
    assert lines[0] == typed
    return [line for line in lines[1:] if line]


def test_demo_types_a_message_and_prints_the_reply(script_persona):
    result = typewriter("demo", "--persona", str(script_persona), "--type", "Who goes there?",
                        "--cps", "2000", "--cr", "0", "--width", "40")
    assert result.returncode == 0, result.stderr
    paper = result.stdout.rstrip("\n")
    assert PRINTABLE_PAPER.match(paper)
    lines = reply_lines(paper, "Who goes there?")
    assert all(len(line) <= 40 for line in lines)
    assert len(lines) >= 3, "a reply this long must wrap at 40 columns"
    assert " ".join(lines) == " ".join(printable(SCRIPT_REPLY).split())
    assert "ROMEO" not in paper, "the model's invented next turn reached the paper"


def test_run_answers_a_typewriter_on_a_pty(script_persona, tmp_path):
    with SimulatedTypewriter(width=65, cps=2000, cr_seconds=0) as sim:
        port = sim.start()
        app = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "run", "--port", port,
             "--persona", str(script_persona), "--state-dir", str(tmp_path / "state"),
             "--control", str(tmp_path / "c.sock")],
            stderr=subprocess.PIPE, text=True,
        )
        try:
            sim.type_text("Hello\n\n")
            deadline = time.monotonic() + 60
            while "home." not in sim.paper.text() and time.monotonic() < deadline:
                assert app.poll() is None, app.stderr.read()
                time.sleep(0.1)
            assert sim.wait_printed(30)
            paper = sim.paper.text()
        finally:
            app.terminate()
            app.wait(10)
    lines = reply_lines(paper.rstrip("\n"), "Hello")
    assert " ".join(lines) == " ".join(printable(SCRIPT_REPLY).split())
    assert all(len(line) <= 65 for line in lines)


def test_random_weight_model_reply_is_printable_and_wrapped(tmp_path, tiny_model):
    from tests.conftest import write_persona

    persona = write_persona(tmp_path / "noise", tiny_model, "seed = 7\n")
    card = persona / "persona.toml"
    card.write_text(card.read_text().replace("temperature = 0.0", "temperature = 1.0"))
    result = typewriter("demo", "--persona", str(persona), "--type", "Speak, speak.",
                        "--cps", "2000", "--cr", "0", "--width", "30")
    assert result.returncode == 0, result.stderr
    paper = result.stdout.rstrip("\n")
    assert PRINTABLE_PAPER.match(paper)
    assert all(len(line) <= 30 for line in paper.splitlines())
    assert paper.splitlines()[0] == "Speak, speak."
