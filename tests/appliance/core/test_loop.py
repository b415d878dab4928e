"""The appliance loop with a simulated typewriter and the real engine."""


import pytest

from appliance.core.loop import Appliance
from appliance.engine.worker import Engine
from appliance.outputs.paper import printable
from appliance.persona.spec import Persona
from firmware_bridge.board import messages as m
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import SCRIPT_REPLY, wait_for

REPLY = " ".join(printable(SCRIPT_REPLY).split())


@pytest.fixture
def rig(script_persona):
    """Typewriter, engine and appliance, running; yields (sim, app)."""
    engine = Engine(Persona.load(script_persona).model_path, n_ctx=512, n_threads=2).start()
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    app = Appliance(Persona.load(script_persona), engine, sim.start()).start()
    with app.running():
        assert wait_for(lambda: app.link.up, 10)
        yield sim, app
    sim.stop()
    engine.close()


def paper_words(sim):
    return " ".join(sim.paper.text().split())


def test_a_conversation_keeps_its_history(rig):
    sim, app = rig
    sim.type_text("Hello\n\n")
    assert wait_for(lambda: app.replies == 1 and app.idle)
    assert sim.wait_printed(10)
    sim.type_text("Again\n\n")
    assert wait_for(lambda: app.replies == 2 and app.idle)
    assert app.conversation.history == [("user", "Hello"), ("character", SCRIPT_REPLY),
                                        ("user", "Again"), ("character", SCRIPT_REPLY)]
    assert sim.wait_printed(10)
    assert paper_words(sim) == f"Hello {REPLY} Again {REPLY}"


def test_reprint_key_prints_the_last_reply_again(rig):
    sim, app = rig
    sim.type_text("Hello\n\n")
    assert wait_for(lambda: app.replies == 1 and app.idle)
    sim.press(m.KEY_REPRINT)
    assert wait_for(lambda: paper_words(sim).count("slowly") == 2)
    assert sim.wait_printed(10)
    assert paper_words(sim) == f"Hello {REPLY} {REPLY}"


def test_reset_during_a_reply_stops_it_and_starts_clean(rig):
    sim, app = rig
    sim.cps = 15  # slow enough to press reset mid-reply
    sim.type_text("Hello\n\n")
    assert wait_for(lambda: "morrow" in sim.paper.text())
    sim.press(m.KEY_RESET)
    assert wait_for(lambda: app.idle)
    assert sim.wait_printed(10)
    cut = paper_words(sim)
    assert "slowly" not in cut, "the rest of the reply must not be printed after reset"
    assert app.conversation.history == []
    sim.cps = 400
    sim.type_text("\nAnew\n\n")
    assert wait_for(lambda: app.replies >= 1 and app.idle and "slowly" in sim.paper.text())
    assert app.conversation.history == [("user", "Anew"), ("character", SCRIPT_REPLY)]


def test_a_message_sent_while_busy_waits_its_turn(rig):
    sim, app = rig
    sim.type_text("First\n\nSecond\n\n")
    assert wait_for(lambda: app.replies == 2 and app.idle)
    assert [t for r, t in app.conversation.history if r == "user"] == ["First", "Second"]


def test_keys_typed_after_a_submit_in_one_batch_are_restored_after_a_crash(script_persona,
                                                                          tmp_path):
    """One batch (a resend after the host was away) holds a message, its Return Return and
    the start of the next line: after a crash the next line is still being typed."""
    from appliance.core.events import Keys
    from appliance.system.journal import Journal

    persona = Persona.load(script_persona)
    engine = Engine(persona.model_path, n_ctx=512, n_threads=2).start()
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    try:
        journal = Journal(tmp_path)
        port = sim.start()
        app = Appliance(persona, engine, port, journal=journal)
        batch = journal.accept_keys(1, 0, b"Hi\n\nnext")
        app.handle(Keys(b"Hi\n\nnext", batch))
        assert app.editor.typed == "next"
        journal.close()  # the crash: nothing else is written
        journal = Journal(tmp_path)
        restored = Appliance(persona, engine, port, journal=journal)
        restored._restore(journal)
        assert restored.editor.typed == "next"
        assert restored.reply_message == "Hi", "the unanswered message is answered"
        restored.reply.cancel()
        journal.close()
    finally:
        sim.stop()
        engine.close()
