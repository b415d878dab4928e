"""What the loop's queue carries: one named tuple per kind, dispatched by type.

The link's thread, the engine's worker, the control socket and the switch
worker only ever post one of these; the loop alone acts on them.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from appliance.engine.worker import Reply
    from appliance.persona.switcher import Plan


class Keys(NamedTuple):
    """Key codes from the typewriter (or the panel's button), with their journal batch."""

    codes: bytes
    batch: int = 0


class Piece(NamedTuple):
    """Reply text the engine has generated."""

    reply: Reply
    text: str


class Done(NamedTuple):
    """The reply has ended (stop, length, cancel or error)."""

    reply: Reply


class Control(NamedTuple):
    """A control-socket command for the loop; the answer goes back on `answer`."""

    command: str
    text: str
    answer: queue.Queue


class SwitchReady(NamedTuple):
    """A validated persona, ready to take over between replies; the result goes on `done`."""

    plan: Plan
    on_paper: bool  # a key asked for it: a failure is printed
    done: queue.Queue


class SwitchFailed(NamedTuple):
    """A switch that did not happen; the loop records it, then answers on `done`."""

    error: str
    on_paper: bool
    done: queue.Queue


class LinkChanged(NamedTuple):
    """The typewriter's link went up, down, restarted or overflowed."""

    state: str


Event = Any  # one of the above
