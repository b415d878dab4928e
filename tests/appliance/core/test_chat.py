"""A chat-template persona through the whole stack: the real SmolLM2 GGUF's own template,
the conversation, the engine, the loop and the simulated typewriter."""

import pytest

from appliance.core.loop import Appliance
from appliance.engine.worker import Engine
from appliance.persona.spec import Persona
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import wait_for


@pytest.mark.slow
def test_a_chat_persona_prints_no_special_token_and_stops_at_the_end_of_its_turn(
        tmp_path, smollm2_base):
    folder = tmp_path / "chat"
    folder.mkdir()
    (folder / "persona.toml").write_text(f'''name = "Juliet"
model = "{smollm2_base}"
[frame]
kind = "chat"
system = "You are Juliet Capulet of Verona. Answer in one short sentence."
[generation]
max_tokens = 60
temperature = 0.0
''')
    persona = Persona.load(folder)
    engine = Engine(persona.model_path, n_ctx=1024, n_threads=2, seed=1).start()
    sim = SimulatedTypewriter(width=65, cps=2000, cr_seconds=0.0)
    app = Appliance(persona, engine, sim.start()).start()
    try:
        with app.running():
            assert wait_for(lambda: app.link.up, 10)
            for n, message in enumerate(["Good morrow. Who art thou?",
                                         "Pray, what do they call you, lady?"], 1):
                sim.type_text(message + "\n\n")
                assert wait_for(lambda n=n: app.replies == n and app.idle, 120)
                stats = app.last_reply_stats
                assert stats["stop"] in ("eos", "stop"), stats  # its end of turn, not the cap
            assert sim.wait_printed(30)
        paper = sim.paper.text()
        assert "<|" not in paper and "im_start" not in paper and "im_end" not in paper, paper
        replies = [reply for _, reply in app.conversation.history[1::2]]
        assert all(reply.strip() for reply in replies), paper
        # The second prompt keeps the first exchange: its cache is reused, not re-evaluated.
        assert app.last_reply_stats["prompt_tokens"] > 2 * app.last_reply_stats[
            "evaluated_at_submit"]
    finally:
        sim.stop()
        engine.close()
