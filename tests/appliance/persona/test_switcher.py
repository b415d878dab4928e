"""Switching persona in a running appliance: the old one serves until the new one is ready."""

import threading

import pytest

from appliance.core.loop import Appliance
from appliance.engine.worker import Engine
from appliance.persona.spec import Persona
from appliance.persona.store import PersonaStore
from appliance.persona.switcher import Switcher
from firmware_bridge.board import messages as m
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.appliance.persona.test_transfer import persona_bundle
from tests.conftest import SCRIPT_REPLY, adapter_bundle, wait_for


def load(persona):
    return Engine(persona.model_path, n_ctx=512, n_threads=2).start()


@pytest.fixture
def store(tmp_path, tiny_model, script_model):
    store = PersonaStore(tmp_path / "store")
    for name, model in (("noise", tiny_model), ("juliet", script_model)):
        with store.staging() as staged:
            store.install(persona_bundle(staged / "b", model), name)
    store.set_active("noise")
    return store


def appliance(store, **switcher_options):
    persona = Persona.load(store.path(store.active))
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    app = Appliance(persona, load(persona), sim.start(),
                    switcher=Switcher(store, load, n_ctx=512, **switcher_options)).start()
    return sim, app


def reply_to(sim, app, text, replies):
    sim.type_text(text + "\n\n")
    assert wait_for(lambda: app.replies == replies and app.idle, 30), (
        f"replies={app.replies} reply={app.reply} waiting={app.waiting} "
        f"typed={app.editor.text!r} unprinted={app.link.unprinted} "
        f"paper={sim.paper.text()[-120:]!r}")
    return app.conversation.last_reply


@pytest.mark.parametrize("free", [None, 0], ids=["load-first", "close-first"])
def test_use_then_rollback(store, free):
    options = {} if free is None else {"free_memory": lambda: free}
    sim, app = appliance(store, **options)
    with app.running():
        assert wait_for(lambda: app.link.up, 10)
        old_engine = app.engine
        answer = app.control({"command": "persona", "text": "use juliet"})
        assert answer == {"ok": True, "persona": "Juliet"}
        assert app.engine is not old_engine and not old_engine.loaded  # the old one freed
        assert reply_to(sim, app, "Hello", 1) == SCRIPT_REPLY
        assert (store.active, store.previous) == ("juliet", "noise")
        assert app.control({"command": "persona", "text": "rollback"})["ok"]
        assert store.active == "noise" and app.persona.folder == store.path("noise")
        assert app.conversation.history == []  # a new persona starts a new conversation
    sim.stop()
    app.engine.close()


def test_a_bad_persona_leaves_the_old_one_serving(store):
    broken = store.path("juliet") / "model.gguf"
    broken.write_bytes(broken.read_bytes()[:1000])
    sim, app = appliance(store)
    with app.running():
        assert wait_for(lambda: app.link.up, 10)
        answer = app.control({"command": "persona", "text": "use juliet"})
        assert not answer["ok"] and "juliet was rejected: checksums:" in answer["error"]
        assert app.control({"command": "status"})["persona_error"] == answer["error"]
        assert store.active == "noise" and app.persona.folder == store.path("noise")
        reply_to(sim, app, "Still there?", 1)
        unknown = app.control({"command": "persona", "text": "use nobody"})
        assert "no persona 'nobody' is installed" in unknown["error"]
    sim.stop()
    app.engine.close()


def test_a_switch_asked_for_mid_reply_waits_for_the_reply_to_end(store):
    sim, app = appliance(store)
    with app.running():
        assert wait_for(lambda: app.link.up, 10)
        old_engine = app.engine
        gate = threading.Event()
        old_engine._jobs.put(gate.wait)  # the model worker is held: the reply stays under way
        sim.type_text("Hello\n\n")
        assert wait_for(lambda: app.reply is not None, 10)
        answers = []
        asking = threading.Thread(target=lambda: answers.append(
            app.control({"command": "persona", "text": "use juliet"})))
        asking.start()
        assert wait_for(lambda: app._pending_switch is not None, 30), "validated, then held"
        assert app.engine is old_engine and store.active == "noise" and answers == []
        gate.set()
        asking.join(60)
        assert answers == [{"ok": True, "persona": "Juliet"}]
        assert app.replies == 1 and not old_engine.loaded
        assert store.active == "juliet" and app.conversation.history == []
        assert SCRIPT_REPLY not in sim.paper.text(), "the reply under way was the old persona's"
        assert reply_to(sim, app, "Hello again", 2) == SCRIPT_REPLY
    sim.stop()
    app.engine.close()


def test_the_next_persona_key_cycles_through_the_installed_ones(store):
    sim, app = appliance(store)
    with app.running():
        assert wait_for(lambda: app.link.up, 10)
        sim.type_text("Half a mess")
        sim.press(m.KEY_NEXT_PERSONA)
        assert wait_for(lambda: store.active == "juliet" and app.persona.name == "Juliet", 30)
        assert reply_to(sim, app, "age", 1) == SCRIPT_REPLY  # the typed line was kept
        assert app.conversation.history[0] == ("user", "Half a message")
        sim.press(m.KEY_NEXT_PERSONA)
        assert wait_for(lambda: store.active == "noise", 30)
    sim.stop()
    app.engine.close()


def test_switching_a_persona_that_is_not_installed(tmp_path, tiny_model):
    folder = persona_bundle(tmp_path / "loose", tiny_model)
    store = PersonaStore(tmp_path / "empty")
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    persona = Persona.load(folder)
    app = Appliance(persona, load(persona), sim.start(),
                    switcher=Switcher(store, load, n_ctx=512)).start()
    with app.running():
        answer = app.control({"command": "persona", "text": "next"})
        assert answer == {"ok": False, "error": "no personas are installed: push one first"}
        assert app.control({"command": "persona", "text": "jump"})["error"].startswith(
            "persona 'jump': use")
    sim.stop()
    app.engine.close()


@pytest.mark.slow
def test_a_persona_on_the_running_base_swaps_its_adapter_and_loads_nothing(tmp_path,
                                                                          tiny_adapters,
                                                                          tiny_model):
    base, (first, second) = tiny_adapters
    store = PersonaStore(tmp_path / "store")
    for name, adapter in (("one", first), ("two", second)):
        with store.staging() as staged:
            store.install(adapter_bundle(staged / "b", base, adapter, name.title()), name)
    with store.staging() as staged:
        store.install(persona_bundle(staged / "b", tiny_model), "whole")
    loads = []

    def load_adapted(persona):
        loads.append(persona.name)
        return Engine(persona.model_path, n_ctx=256, n_threads=2,
                      adapter=persona.adapter_path).start()

    switcher = Switcher(store, load_adapted, n_ctx=256)
    engine = load_adapted(Persona.load(store.path("one")))
    try:
        plan = switcher.prepare("two", engine.model_path, engine)
        assert plan.shares_base and plan.engine is None and loads == ["One"]
        assert switcher.swap_onto(engine, plan.persona) is engine
        assert engine.adapter_path == store.path("two") / "adapter.gguf"
        other = switcher.prepare("whole", engine.model_path, engine)
        assert not other.shares_base and other.engine is not None  # another model: loaded
        other.engine.close()
    finally:
        engine.close()


@pytest.mark.slow
def test_the_appliance_switches_adapters_on_one_base_without_a_reload(tmp_path, tiny_adapters):
    """Through the loop: `persona use` swaps the adapter on the running engine, loads
    nothing, and the next reply comes from it."""
    base, (first, second) = tiny_adapters
    store = PersonaStore(tmp_path / "store")
    for name, adapter in (("one", first), ("two", second)):
        with store.staging() as staged:
            store.install(adapter_bundle(staged / "b", base, adapter, name.title()), name)
    loads = []

    def load_adapted(persona):
        loads.append(persona.name)
        return Engine(persona.model_path, n_ctx=512, n_threads=2,
                      adapter=persona.adapter_path).start()

    persona = Persona.load(store.path("one"))
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    app = Appliance(persona, load_adapted(persona), sim.start(),
                    switcher=Switcher(store, load_adapted, n_ctx=512)).start()
    engine = app.engine
    try:
        with app.running():
            assert wait_for(lambda: app.link.up, 10)
            assert app.control({"command": "persona", "text": "use two"}) == {
                "ok": True, "persona": "Two"}
            assert app.engine is engine and loads == ["One"], "nothing was loaded"
            assert engine.adapter_path == store.path("two") / "adapter.gguf"
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: app.replies == 1 and app.idle, 60)
            assert app.control({"command": "status"})["persona"] == "Two"
    finally:
        sim.stop()
        engine.close()
