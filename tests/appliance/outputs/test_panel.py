"""The panel on gpiozero's mock pins (this machine has no GPIO), driving a real appliance."""

import logging
import time

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from appliance.core.loop import Appliance
from appliance.engine.worker import Engine
from appliance.outputs.panel import NoPanel, Panel, panel_for
from appliance.outputs.paper import printable
from appliance.persona.spec import Persona
from appliance.persona.switcher import Switcher
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.appliance.persona.test_switcher import load, store  # noqa: F401  (the store fixture)
from tests.conftest import SCRIPT_REPLY, wait_for

THINKING, READY, BUTTON, BUZZER = 18, 23, 24, 25
HOLD = 0.3
REPLY = " ".join(printable(SCRIPT_REPLY).split())


@pytest.fixture
def pins():
    return MockFactory(pin_class=MockPWMPin)


def panel_on(pins) -> Panel:
    return Panel(THINKING, READY, BUTTON, BUZZER, pin_factory=pins, hold_seconds=HOLD)


def press(pins) -> None:
    pins.pin(BUTTON).drive_low()  # the button pulls the pin down
    time.sleep(0.05)
    pins.pin(BUTTON).drive_high()


def hold(pins) -> None:
    pins.pin(BUTTON).drive_low()
    time.sleep(HOLD + 0.3)
    pins.pin(BUTTON).drive_high()


def words(sim) -> str:
    return " ".join(sim.paper.text().split())


def test_the_thinking_led_pulses_and_the_ready_led_shows_who_waits(pins):
    panel = panel_on(pins)
    try:
        panel.show(thinking=True, busy=True)
        levels = []
        for _ in range(40):
            levels.append(pins.pin(THINKING).state)
            time.sleep(0.03)
        assert len({round(v, 2) for v in levels}) > 5, f"not pulsing: {levels}"
        assert 0 <= min(levels) < 0.3 and 0.7 < max(levels) <= 1
        assert pins.pin(READY).state == 0
        panel.show(thinking=False, busy=True)
        assert pins.pin(THINKING).state == 0 and pins.pin(READY).state == 0
        panel.show(thinking=False, busy=False)
        assert pins.pin(READY).state == 1
    finally:
        panel.close()


def test_the_buzzer_beeps_three_times_when_the_link_goes_down(pins):
    panel = panel_on(pins)
    try:
        panel.link("up")
        time.sleep(0.2)
        assert pins.pin(BUZZER).state == 0
        panel.link("down")
        time.sleep(1.2)
        beeps = [s for s in pins.pin(BUZZER).states[1:] if s.state == 1]
        assert len(beeps) == 3
        assert pins.pin(BUZZER).state == 0
    finally:
        panel.close()


def test_pins_in_use_and_no_gpio_are_one_message_each(pins, caplog):
    assert isinstance(panel_for(), NoPanel) and not isinstance(panel_for(), Panel)
    first = panel_for(THINKING, READY, BUTTON, pin_factory=pins)
    assert isinstance(first, Panel)
    second = panel_for(thinking=BUTTON, buzzer=BUZZER, pin_factory=pins)
    assert type(second) is NoPanel
    third = panel_for(THINKING)  # this machine has no GPIO of its own
    assert type(third) is NoPanel
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2, errors
    assert errors[0].startswith("panel off: cannot use the pins panel_thinking = 24, "
                                "panel_buzzer = 25 (GPIOPinInUse")
    assert errors[1].startswith("panel off: no GPIO on this machine")
    first.close()


# -- the button in a running appliance ---------------------------------------------------------


@pytest.fixture
def rig(script_persona, pins):
    """Typewriter, engine and an appliance with a panel, running; yields (sim, app)."""
    engine = Engine(Persona.load(script_persona).model_path, n_ctx=512, n_threads=2).start()
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    app = Appliance(Persona.load(script_persona), engine, sim.start(),
                    panel=panel_on(pins)).start()
    with app.running():
        assert wait_for(lambda: app.link.up, 10)
        yield sim, app
    sim.stop()
    engine.close()


def test_a_press_when_idle_starts_a_new_conversation(rig, pins):
    sim, app = rig
    sim.type_text("Hello\n\n")
    assert wait_for(lambda: app.replies == 1 and app.idle, 30)
    assert wait_for(lambda: pins.pin(READY).state == 1 and pins.pin(THINKING).state == 0)
    glow = [s.state for s in pins.pin(THINKING).states]
    assert 0.1 < max(glow) and len(set(glow)) > 3, "the LED pulsed while the model worked"
    press(pins)
    assert wait_for(lambda: app.conversation.history == [])
    sim.type_text("Again\n\n")
    assert wait_for(lambda: app.replies == 2 and app.idle, 30)
    assert app.conversation.history == [("user", "Again"), ("character", SCRIPT_REPLY)]


def test_a_press_while_typing_drops_the_line(rig, pins):
    sim, app = rig
    sim.type_text("Hello\n\n")
    assert wait_for(lambda: app.replies == 1 and app.idle, 30)
    sim.type_text("Forget th")
    assert wait_for(lambda: app.editor.text == "Forget th")
    press(pins)
    assert wait_for(lambda: app.editor.text == "" and app.conversation.history == [])
    sim.type_text("Anew\n\n")
    assert wait_for(lambda: app.replies == 2 and app.idle, 30)
    assert app.conversation.history == [("user", "Anew"), ("character", SCRIPT_REPLY)]


def test_a_press_during_a_reply_stops_it_and_the_ready_led_waits_for_the_end(rig, pins):
    sim, app = rig
    sim.cps = 15
    sim.type_text("Hello\n\n")
    assert wait_for(lambda: "morrow" in sim.paper.text(), 30)
    assert pins.pin(READY).state == 0, "busy while the reply prints"
    press(pins)
    assert wait_for(lambda: app.idle)
    assert sim.wait_printed(10)
    assert "slowly" not in sim.paper.text(), "the rest of the reply is not printed"
    assert app.conversation.history == []
    assert wait_for(lambda: pins.pin(READY).state == 1)


def test_the_buzzer_beeps_when_the_typewriter_stops_answering(rig, pins):
    sim, app = rig
    assert pins.pin(BUZZER).state == 0
    sim.stop()  # the typewriter falls silent: the link is declared down after a few seconds
    assert wait_for(lambda: not app.link.up, 15)
    assert wait_for(lambda: sum(s.state == 1 for s in pins.pin(BUZZER).states) == 3, 5)


# -- hold: the next installed persona -------------------------------------------------------------


@pytest.mark.parametrize("when", ["idle", "typing", "reply"])
def test_a_hold_switches_to_the_next_persona(store, pins, when):  # noqa: F811
    store.set_active("juliet")  # the next installed one is "noise"
    persona = Persona.load(store.path("juliet"))
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    app = Appliance(persona, load(persona), sim.start(), panel=panel_on(pins),
                    switcher=Switcher(store, load, n_ctx=512)).start()
    with app.running():
        assert wait_for(lambda: app.link.up, 10)
        if when == "typing":
            sim.type_text("Half a li")
            assert wait_for(lambda: app.editor.text == "Half a li", 30)
        if when == "reply":
            sim.cps = 30  # the reply takes seconds to print
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: "morrow" in sim.paper.text(), 30)
        hold(pins)
        assert wait_for(lambda: store.active == "noise", 60)
        assert app.persona.folder == store.path("noise")
        replies = app.replies
        if when == "reply":
            assert wait_for(lambda: "slowly home." in sim.paper.text(), 30), (
                "a hold is not a reset: the reply prints to its end")
            assert replies == 1
        if when == "typing":
            assert app.editor.text == "Half a li", "a hold is not a reset: the line stays"
            sim.type_text("ne\n\n")
        else:
            sim.cps = 400
            sim.type_text("Hello\n\n")
        assert wait_for(lambda: app.replies == replies + 1 and app.idle, 30)
        assert app.conversation.history[0] == ("user", "Half a line" if when == "typing"
                                               else "Hello")
    sim.stop()
    app.engine.close()


def test_without_a_panel_the_appliance_prints_as_ever(script_persona, pins, caplog):
    taken = Panel(THINKING, pin_factory=pins)
    panel = panel_for(THINKING, READY, BUTTON, pin_factory=pins)
    assert type(panel) is NoPanel
    engine = Engine(Persona.load(script_persona).model_path, n_ctx=512, n_threads=2).start()
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    app = Appliance(Persona.load(script_persona), engine, sim.start(), panel=panel).start()
    try:
        with app.running():
            assert wait_for(lambda: app.link.up, 10)
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: app.replies == 1 and app.idle, 30)
            assert sim.wait_printed(10)
        assert words(sim) == f"Hello {REPLY}"
        assert sum("panel off" in r.getMessage() for r in caplog.records) == 1
    finally:
        sim.stop()
        engine.close()
        taken.close()
