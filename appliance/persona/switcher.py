"""Getting the next persona ready while the current one keeps serving.

Validation (in a limited child process) and, when the board has the memory for
two models at once, loading the new model happen off the appliance's loop, so
the typewriter keeps answering and keys keep being taken. When memory is tight
the loop frees the old model first and loads the new one itself; keys typed
meanwhile wait in its queue. Any failure leaves the old persona in charge.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from appliance.engine.gguf_header import HeaderError, read_header
from appliance.engine.worker import Engine, EngineError
from appliance.errors import UserError
from appliance.persona.sandbox import SandboxError
from appliance.persona.spec import Persona, PersonaError
from appliance.persona.store import PersonaStore, StoreError
from appliance.persona.validate import Limits, available_memory, needed_memory, validate

log = logging.getLogger(__name__)

SWITCH_TIMEOUT = 600.0  # validating and loading a 1B model on a Pi 4 takes a while


class SwitchError(UserError):
    """The persona was not switched; the old one still serves. The message says why."""


@dataclass
class Plan:
    """A validated persona, with its engine already loaded unless memory was tight.

    shares_base: the persona is an adapter on the base the current engine runs, so
    nothing is loaded; `Switcher.swap_onto` puts its adapter on that engine.
    """

    name: str
    persona: Persona
    engine: Optional[Engine]
    shares_base: bool = False


def shares_base(persona: Persona, engine: Engine) -> bool:
    """The persona is an adapter on exactly the model file the engine has loaded."""
    return (persona.base is not None and persona.model_path.resolve() ==
            engine.model_path.resolve() and persona.base_sha256 == engine.base_sha256)


class Switcher:
    """Knows the store and how to load a persona's model; the appliance asks it for plans."""

    def __init__(self, store: PersonaStore, load_engine: Callable[[Persona], Engine],
                 n_ctx: int = 2048, free_memory: Callable[[], int] = available_memory):
        self.store = store
        self.load_engine = load_engine
        self.n_ctx = n_ctx
        self.free_memory = free_memory

    def installed_name(self, persona: Persona) -> Optional[str]:
        """The store's name for a persona, or None for one run from elsewhere."""
        folder = persona.folder.resolve()
        return folder.name if folder.parent == self.store.root.resolve() else None

    def target(self, request: str, current: str) -> str:
        """The store name a request means: `use NAME`, `rollback` or `next`."""
        words = request.split()
        try:
            if len(words) == 2 and words[0] == "use":
                self.store.path(words[1])
                return words[1]
            if words == ["rollback"]:
                return self.store.rollback_target()
            if words == ["next"]:
                names = self.store.names()
                if not names:
                    raise SwitchError("no personas are installed: push one first")
                at = names.index(current) if current in names else -1
                return names[(at + 1) % len(names)]
        except StoreError as e:
            raise SwitchError(str(e)) from None
        raise SwitchError(f"persona {request!r}: use 'use NAME', 'rollback' or 'next'")

    def prepare(self, name: str, current_model: Optional[Path],
                current: Optional[Engine] = None) -> Plan:
        """Validate `name` and, if both models fit in memory together, load it now.

        A persona on the base `current` runs (same file, same sha256) loads
        nothing: its plan says so, and the switch swaps adapters.
        """
        folder = self.store.path(name)
        freed = current_model.stat().st_size if current_model and current_model.exists() else 0
        try:
            verdict = validate(folder, Limits.of_this_board(n_ctx=self.n_ctx, freed=freed))
        except SandboxError as e:
            raise SwitchError(f"{name} was not switched to: {e}") from None
        if not verdict.ok:
            raise SwitchError(f"{name} was rejected: {verdict.reason}")
        confined = next((c.detail for c in verdict.checks if c.name == "sandbox"), "?")
        log.info("%s: validated, confined by %s", name, confined)
        try:
            persona = Persona.load(folder)
            need = needed_memory(read_header(persona.model_path), self.n_ctx)
        except (PersonaError, HeaderError) as e:
            raise SwitchError(str(e)) from None
        if current is not None and shares_base(persona, current):
            return Plan(name, persona, None, shares_base=True)
        if need > self.free_memory():
            log.info("%s: %d MiB needed, not free beside the current model: it loads after "
                     "the current model is closed", name, need >> 20)
            return Plan(name, persona, None)
        return Plan(name, persona, self.load(persona))

    def swap_onto(self, engine: Engine, persona: Persona) -> Engine:
        """Put the persona's adapter on the running engine (tens of ms, not a reload)."""
        try:
            engine.use_adapter(persona.adapter_path)
        except EngineError as e:
            raise SwitchError(f"{persona.name}: {e}") from None
        return engine

    def load(self, persona: Persona) -> Engine:
        try:
            return self.load_engine(persona)
        except EngineError as e:
            raise SwitchError(f"{persona.name} did not load: {e}") from None

    def activated(self, name: str) -> None:
        try:
            self.store.set_active(name)
        except (StoreError, OSError) as e:
            log.error("switched to %s but could not record it (%s): the next start uses the "
                      "previous persona", name, e)


class SwitchWorker:
    """The one thread that prepares a switch: at most one at a time, never on the loop.

    Validation and loading take seconds to minutes; the job posts its results to
    the loop as events, so only the loop changes the appliance's state.
    """

    def __init__(self) -> None:
        self._busy = threading.Lock()

    def start(self, job: Callable[[], None]) -> bool:
        """Run job on the switch thread; False, doing nothing, while another is under way."""
        if not self._busy.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                job()
            except Exception:  # a bug in a job must not keep every later switch out
                log.exception("persona switch failed")
            finally:
                self._busy.release()

        threading.Thread(target=run, name="switch", daemon=True).start()
        return True

