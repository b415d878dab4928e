"""The one interface every output has: the loop calls these hooks, in fixed phases.

Paper, voice and panel are each one class; the loop holds them in a list and
calls every hook on every output, the way KMK's core calls its modules. Each
hook is a no-op here, so an output implements only the phases it cares about,
and a new output is one file plus one config value. Outputs take text, never
models: the engine knows no output, and no output knows the engine.
"""

from __future__ import annotations

from typing import Callable, Dict


class Output:
    """An output that does nothing: the base of every output, and the null object."""

    speaks = False  # whether `say` reaches the person's ears

    def __init__(self) -> None:
        # An output that is also an input (the panel's button) posts key codes here.
        self.on_key: Callable[[int], None] = lambda code: None

    def use(self, persona) -> None:
        """A persona takes over (its voice, for one)."""

    def typed(self, code: int) -> None:
        """A key the person typed, struck on the paper by the typewriter itself."""

    def function(self, name: str) -> bool:
        """A function key the loop does not handle itself; True when this output did."""
        return False

    def reply_started(self) -> None:
        """A reply begins (the model starts generating)."""

    def reply_piece(self, piece: str) -> None:
        """The reply's next text, as the model streams it (leading space already trimmed)."""

    def reply_ended(self) -> None:
        """The reply is complete."""

    def line(self, text: str) -> None:
        """A whole line outside a reply: a reprint, `ctl print`, a note from the appliance."""

    def say(self, text: str) -> None:
        """Speak a line (`ctl say`); only outputs that speak do."""

    def stop(self) -> None:
        """Reset: stop at once, dropping what has not been shown yet."""

    def show(self, thinking: bool, busy: bool) -> None:
        """Each turn of the loop: whether the model works, and whether the appliance is busy."""

    def link(self, state: str) -> None:
        """The typewriter's link changed: up, down, restarted, overflow, refused (another
        protocol version)."""

    def status(self) -> Dict:
        """Figures for `ctl status`."""
        return {}

    @property
    def idle(self) -> bool:
        """Nothing left to print, say or show."""
        return True

    def close(self) -> None:
        """The appliance is stopping."""
