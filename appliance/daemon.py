"""The appliance loop: keys -> line editor -> conversation -> engine -> printer.

Everything that changes the appliance's state happens on the thread that calls
`Appliance.run`; the link thread and the reply pump only post events to it.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, Optional

from appliance.conversation import Conversation
from appliance.engine import Engine, EngineError, Reply
from appliance.line_editor import LineEditor
from appliance.persona import Persona, make_frame
from appliance.printer import Typesetter
from firmware_bridge.link import Link

log = logging.getLogger(__name__)

MIN_TURN = 32  # tokens a message must at least have room for


class Appliance:
    """One persona answering one typewriter."""

    def __init__(self, persona: Persona, engine: Engine, port: str, width: int = 65,
                 prefill: bool = True):
        self.persona = persona
        self.engine = engine
        self.prefill = prefill
        self.frame = make_frame(persona, engine.chat_template, engine.bos, engine.eos)
        reply_room = persona.generation.max_tokens
        self.conversation = Conversation(self.frame, engine.tokenize, engine.n_ctx, reply_room)
        if len(self.conversation.head) + reply_room + MIN_TURN > engine.n_ctx:
            raise EngineError(
                f"a context of {engine.n_ctx} tokens cannot hold persona {persona.name!r} "
                f"({len(self.conversation.head)} tokens of frame, {reply_room} for a reply): "
                "raise --ctx or shorten the persona's preamble and examples"
            )
        self.editor = LineEditor()
        self.typesetter = Typesetter(width=width)
        self.events: queue.Queue[tuple] = queue.Queue()
        self.link = Link(port, on_key=lambda code: self.events.put(("key", code)),
                         on_change=lambda what: self.events.put(("link", what)))
        self.reply: Optional[Reply] = None
        self.reply_text = ""
        self.waiting: list = []
        self.replies = 0
        self.at_line_start = True
        self._stop = threading.Event()
        self.on_reply: Callable[[str, Reply], None] = lambda text, reply: None

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Appliance:
        self.link.open()
        self._prefill("")
        return self

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.reply is not None:
            self.reply.cancel()
        self.link.close()

    def run(self) -> None:
        """Handle events until stop() is called."""
        while not self._stop.is_set():
            try:
                event = self.events.get(timeout=0.1)
            except queue.Empty:
                continue
            self.handle(event)

    @property
    def idle(self) -> bool:
        """No reply being generated and nothing left to send to the typewriter."""
        return self.reply is None and not self.waiting and self.link.unprinted == 0

    # -- events -------------------------------------------------------------------------

    def handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "key":
            self._key(event[1])
        elif kind == "piece" and event[1] is self.reply:
            self._print_reply(event[2])
        elif kind == "done" and event[1] is self.reply:
            self._finish_reply(event[1])
        elif kind == "link":
            log.info("link %s", event[1])

    def _key(self, code: int) -> None:
        self.at_line_start = code == 0x0A
        ev = self.editor.press(code)
        if ev is None:
            return
        if ev.kind == "edit":
            self._prefill(ev.text)
        elif ev.kind == "submit":
            self.waiting.append(ev.text)
            self._next()
        elif ev.kind == "reset":
            self._reset()
        elif ev.kind == "reprint":
            if self.reply is None and self.conversation.last_reply:
                self._typeset_line(self.conversation.last_reply)
        elif ev.kind in ("next_persona", "toggle_speech"):
            log.info("%s is not available on this appliance yet", ev.kind.replace("_", " "))

    def _reset(self) -> None:
        """The reset key: stop the reply, drop what is unprinted, start a new conversation."""
        if self.reply is not None:
            self.reply.cancel()
            self.reply = None
        self.link.cancel()
        self.waiting.clear()
        self.conversation.reset()
        self._prefill("")
        log.info("conversation reset")

    def _next(self) -> None:
        if self.reply is not None or not self.waiting:
            return
        message = self.waiting.pop(0)
        prompt = self.conversation.prompt_tokens(message)
        self.reply = self.engine.generate(prompt, self.frame.stops, self.persona.generation,
                                          listener=self._heard)
        self.reply_message = message
        self.reply_text = ""
        if not self.at_line_start:
            self.link.print_text("\n")
        self.typesetter.start(0)

    def _heard(self, reply: Reply, piece: Optional[str]) -> None:
        """A reply's piece, or its end (None), from the engine's worker."""
        if piece is None:
            if reply.error is not None:
                log.error("generation failed: %s", reply.error)
            self.events.put(("done", reply))
        else:
            self.events.put(("piece", reply, piece))

    def _print_reply(self, piece: str) -> None:
        if not self.reply_text:
            piece = piece.lstrip()
        self.reply_text += piece
        out = self.typesetter.feed(piece)
        if out:
            self.link.print_text(out)

    def _finish_reply(self, reply: Reply) -> None:
        text = self.reply_text.strip()
        self.link.print_text(self.typesetter.finish() + "\n\n")
        self.at_line_start = True
        self.conversation.add(self.reply_message, text, reply)
        log.info("reply: %d tokens (%s), prompt %d tokens of which %d evaluated at submit",
                 reply.tokens, reply.stop_reason, reply.prompt_tokens, reply.evaluated)
        self.reply = None
        self.replies += 1
        self.on_reply(text, reply)
        self._next()
        if self.reply is None:
            self._prefill(self.editor.text)

    def _prefill(self, typed: str) -> None:
        """Let the engine evaluate the prompt as far as it is known while the person types.

        After a return the message is probably complete (a second return sends
        it), so the whole turn is evaluated, label included: if the person goes
        on typing instead, the engine simply rewinds.
        """
        if not self.prefill or self.reply is not None:
            return
        if typed and self.at_line_start:
            self.engine.prefill(self.conversation.prompt_tokens(typed))
        else:
            self.engine.prefill(self.conversation.typing_tokens(typed))

    def _typeset_line(self, text: str) -> None:
        self.typesetter.start(0)
        prefix = "" if self.at_line_start else "\n"
        body = self.typesetter.feed(text) + self.typesetter.finish()
        self.link.print_text(prefix + body + "\n\n")
        self.at_line_start = True
