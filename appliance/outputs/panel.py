"""The small panel on the typewriter: what the appliance is doing, and one button.

A "thinking" LED pulses while the model works (prefill while the person types,
or a reply); a "ready" LED is lit while the appliance waits for the person;
the button is two function keys (press: new conversation, hold: next
persona), so it goes the way the keyboard's keys go; a buzzer beeps when the
typewriter stops answering. gpiozero picks the board's pin library (lgpio on a
Pi 5); a panel that cannot be set up leaves the appliance printing without it.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Optional

from appliance.outputs.base import Output
from firmware_bridge.board import messages as m

log = logging.getLogger(__name__)

HOLD_SECONDS = 1.5  # a press held this long is "next persona", not "new conversation"
PULSE_SECONDS = 1.0  # one breath of the thinking LED: shorter work still shows one


class NoPanel(Output):
    """No panel fitted: the appliance tells it everything and nothing happens."""


class Panel(NoPanel):
    """LEDs, a button and a buzzer on GPIO pins (BCM numbers); None: not fitted."""

    def __init__(self, thinking: Optional[int] = None, ready: Optional[int] = None,
                 button: Optional[int] = None, buzzer: Optional[int] = None,
                 pin_factory=None, hold_seconds: float = HOLD_SECONDS):
        from gpiozero import LED, PWMLED, Button, Buzzer

        super().__init__()
        self._devices: list = []
        self._state: Optional[tuple] = None
        self._thinking_until = 0.0
        self._held = False
        try:
            self.thinking = self._add(PWMLED, thinking, pin_factory=pin_factory)
            self.ready = self._add(LED, ready, pin_factory=pin_factory)
            self.buzzer = self._add(Buzzer, buzzer, pin_factory=pin_factory)
            self.button = self._add(Button, button, hold_time=hold_seconds,
                                    pin_factory=pin_factory)
        except BaseException:
            self.close()
            raise
        if self.button is not None:
            self.button.when_held = self._button_held
            self.button.when_released = self._button_released

    def _add(self, kind, pin: Optional[int], **options):
        if pin is None:
            return None
        device = kind(pin, **options)
        self._devices.append(device)
        return device

    def _button_held(self) -> None:
        self._held = True
        self.on_key(m.KEY_NEXT_PERSONA)

    def _button_released(self) -> None:
        if not self._held:
            self.on_key(m.KEY_RESET)
        self._held = False

    def show(self, thinking: bool, busy: bool) -> None:
        """The appliance's state; LEDs change only when it does (pulsing runs on its own)."""
        now = time.monotonic()
        if thinking and not (self._state and self._state[0]):
            self._thinking_until = now + PULSE_SECONDS
        thinking = thinking or now < self._thinking_until
        if (thinking, busy) == self._state:
            return
        self._state = (thinking, busy)
        if self.thinking is not None:
            if thinking:
                self.thinking.pulse(fade_in_time=PULSE_SECONDS / 2,
                                    fade_out_time=PULSE_SECONDS / 2)
            else:
                self.thinking.off()
        if self.ready is not None:
            self.ready.value = not busy

    def link(self, state: str) -> None:
        if state in ("down", "refused") and self.buzzer is not None:
            self.buzzer.beep(on_time=0.15, off_time=0.15, n=3)

    def close(self) -> None:
        for device in self._devices:
            device.close()
        self._devices = []


def panel_for(thinking: Optional[int] = None, ready: Optional[int] = None,
              button: Optional[int] = None, buzzer: Optional[int] = None,
              pin_factory=None) -> NoPanel:
    """The panel the config describes; NoPanel, after one message, when it cannot be had."""
    pins = {"panel_thinking": thinking, "panel_ready": ready, "panel_button": button,
            "panel_buzzer": buzzer}
    if all(pin is None for pin in pins.values()):
        return NoPanel()
    try:
        with warnings.catch_warnings():  # gpiozero warns about each pin library it skips
            warnings.simplefilter("ignore")
            return Panel(thinking, ready, button, buzzer, pin_factory=pin_factory)
    except ImportError as e:
        if e.name == "gpiozero":
            problem = "gpiozero is not installed: pip install 'typewriter-appliance[pi]'"
        else:  # gpiozero's BadPinFactory is an ImportError too
            problem = (f"no GPIO on this machine ({e}): on a Raspberry Pi pip install "
                       "lgpio, elsewhere remove the panel_* settings")
    except Exception as e:  # each pin library raises its own errors for pins it cannot have
        given = ", ".join(f"{k} = {v}" for k, v in pins.items() if v is not None)
        problem = (f"cannot use the pins {given} ({type(e).__name__}: {e}): free them "
                   "(another program or a second panel setting holds one) or change them")
    log.error("panel off: %s", problem, extra={"ERROR_KIND": "panel"})
    return NoPanel()
