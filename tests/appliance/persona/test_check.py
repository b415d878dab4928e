"""`typewriter persona check`: verdicts on real models, and the shipped default persona."""

import json

import pytest

from appliance.engine.synth import synthesize
from appliance.persona.bundle import verify
from appliance.persona.check import probes, run_check
from appliance.persona.spec import DEFAULT_PERSONA, Persona
from tests.conftest import SCRIPT, typewriter, write_persona


def verdicts(result):
    out = {}
    for r in result["probes"]:
        out.setdefault(r["probe"], set()).add(r["passed"])
    return out


def test_a_persona_that_never_says_its_name_fails_the_gate(script_persona):
    """The scripted model answers everything with one line about Rome: in frame, nameless."""
    result = run_check(script_persona)
    assert result["persona"] == "Juliet" and result["gating_passed"] is False
    v = verdicts(result)
    assert v["own name"] == {False}
    assert v["in frame"] == {True} and v["ends in cap"] == {True}
    reply = result["probes"][0]["reply"]
    assert reply == SCRIPT.split("\n")[0]


class CannedProber:
    """Replies as a model that names a next speaker mid-line would (a scripted model cannot:
    a prompt ending in the label's colon starts its chain at the colon it shares)."""

    def __init__(self, persona: Persona, reply: str):
        self.persona, self.reply = persona, reply
        self.sampling = persona.generation

    def ask(self, message: str):
        return self.reply, "stop", "\n"


def test_a_reply_that_writes_a_speaker_label_is_out_of_frame(script_persona):
    rows = probes(CannedProber(Persona.load(script_persona), "I am Juliet. NURSE: Madam!"))
    v = verdicts({"probes": rows})
    assert v["own name"] == {True} and v["ends in cap"] == {True}
    assert v["in frame"] == {False}
    assert next(r for r in rows if r["probe"] == "in frame")["why"] == "writes a turn: 'NURSE:'"


def test_a_reply_that_never_ends_fails_the_length_cap(tmp_path):
    model = synthesize("tiny", tmp_path / "m.gguf", script="Juliet speaks on and on, a river")
    folder = write_persona(tmp_path / "p", model)
    toml = folder / "persona.toml"
    toml.write_text(toml.read_text().replace("max_tokens = 80", "max_tokens = 20"))
    result = run_check(folder)
    assert verdicts(result)["ends in cap"] == {False}
    assert result["gating_passed"] is False


@pytest.fixture(scope="module")
def shipped(smollm2_base):
    """The shipped persona, with its base fetched (it ships as an adapter on SmolLM2)."""
    Persona.load(DEFAULT_PERSONA).check_base()
    return DEFAULT_PERSONA


def test_the_shipped_persona_is_a_sealed_small_adapter_bundle():
    verify(DEFAULT_PERSONA)
    persona = Persona.load(DEFAULT_PERSONA)
    assert persona.base == "smollm2-135m" and not (DEFAULT_PERSONA / "model.gguf").exists()
    assert (DEFAULT_PERSONA / "adapter.gguf").stat().st_size <= 10_000_000
    card = (DEFAULT_PERSONA / "card.md").read_text()
    assert "--character JULIET --base smollm2-135m" in card
    assert "Licence: public domain" in card
    assert "NLL per reply token: base alone" in card


@pytest.fixture(scope="module")
def shipped_check(shipped, tmp_path_factory):
    report = tmp_path_factory.mktemp("check") / "check.json"
    done = typewriter("persona", "check", str(shipped), "--json", str(report))
    return done, json.loads(report.read_text())


@pytest.mark.slow
def test_the_shipped_persona_says_her_name_asked_in_words_she_never_trained_on(shipped_check):
    done, result = shipped_check
    pray = next(r for r in result["probes"] if r["message"].startswith("Pray, what do they"))
    assert pray["passed"] and "Juliet" in pray["reply"]
    assert all(r["passed"] for r in result["probes"] if r["probe"] in ("in frame",
                                                                       "ends in cap"))
    assert result["nll"]["persona"] < result["nll"]["base"]  # read from card.md
    assert "held-out NLL per token (card.md)" in done.stdout


@pytest.mark.slow
def test_the_shipped_persona_passes_its_gating_probes(shipped_check):
    """Both name questions (unlike any identity example she was built with) get her name,
    four messages get four replies of her own, none an echo: what the card records."""
    done, result = shipped_check
    assert done.returncode == 0 and result["gating_passed"] is True, result["probes"]
    names = [r["reply"] for r in result["probes"] if r["probe"] == "own name"]
    assert len(names) == 2 and all("Juliet" in reply for reply in names)
    card = (DEFAULT_PERSONA / "card.md").read_text()
    assert "Gating probes passed: yes." in card
