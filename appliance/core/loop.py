"""The appliance loop: keys -> line editor -> conversation -> engine -> printer.

Everything that changes the appliance's state happens on the thread that calls
`Appliance.run`; the link thread, the engine worker and the control socket only
post events to it.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from appliance.core.conversation import Conversation
from appliance.core.line_editor import LineEditor
from appliance.engine.worker import Engine, EngineError, Reply
from appliance.outputs.panel import NoPanel
from appliance.outputs.paper import Typesetter
from appliance.outputs.speech import Speaker
from appliance.persona.spec import Persona, make_frame
from appliance.persona.switcher import SWITCH_TIMEOUT, Plan, Switcher, SwitchError
from appliance.system.journal import Journal
from appliance.system.service import Notifier
from firmware_bridge.board import messages as m
from firmware_bridge.host.link import Link

log = logging.getLogger(__name__)

MIN_TURN = 32  # tokens a message must at least have room for
HUNG_AFTER = 30.0  # seconds without a token before the model worker counts as hung
PIECE_BATCH = 0.2  # seconds of reply text gathered before the loop is woken
# The loop's turn when no event comes: the watchdog, print progress, the panel. Each
# wake-up while a reply is generated takes a core from the model for a moment.
LOOP_TICK = 0.25


class Appliance:
    """One persona answering one typewriter."""

    def __init__(self, persona: Persona, engine: Engine, port: str, width: int = 65,
                 prefill: bool = True, journal: Optional[Journal] = None,
                 notifier: Optional[Notifier] = None, double_return: bool = True,
                 switcher: Optional[Switcher] = None, speaker: Optional[Speaker] = None,
                 panel: Optional[NoPanel] = None, printing: bool = True):
        self.prefill = prefill
        self.speaker = speaker
        self.printing = printing  # False: no print mechanism, the replies are only spoken
        self._adopt(persona, engine)
        self.switcher = switcher
        self._pending_switch: Optional[tuple] = None  # (plan, answer) until the reply ends
        self.last_switch_error = ""
        self.last_reply_stats: dict = {}
        self.editor = LineEditor(double_return=double_return)
        self.typesetter = Typesetter(width=width)
        self.events: queue.Queue[tuple] = queue.Queue()
        self.journal = journal
        self.notifier = notifier or Notifier({})
        self._next_ping = 0.0
        self._hung = False
        self.reply_turn = 0
        self.print_start = 0  # the typewriter's printed counter when the reply began
        self.print_sent = 0  # print bytes of the reply handed to the link so far
        self.print_seen = -1  # the extent last written to the journal
        self.link = Link(port, on_keys=self._keys_arrived,
                         on_change=lambda what: self.events.put(("link", what)))
        self.panel = panel or NoPanel()
        self.panel.on_key = lambda code: self.events.put(("keys", bytes([code]), 0))
        if speaker is not None and printing:  # the voice keeps pace with the paper
            speaker.paper = lambda: (self.link.printed - self.print_start) % 2**32
        self.reply: Optional[Reply] = None
        self.reply_text = ""
        self._unposted = ""  # reply text the worker has not posted yet
        self._posted_at = 0.0
        self.waiting: list = []
        self.replies = 0
        self.at_line_start = True
        self._stop = threading.Event()
        self.on_reply: Callable[[str, Reply], None] = lambda text, reply: None

    def _adopt(self, persona: Persona, engine: Engine) -> None:
        """Take a persona and its loaded model as the ones that answer."""
        frame = make_frame(persona, engine.chat_template, engine.bos, engine.eos)
        reply_room = persona.generation.max_tokens
        conversation = Conversation(frame, engine.tokenize, engine.n_ctx, reply_room)
        if len(conversation.head) + reply_room + MIN_TURN > engine.n_ctx:
            raise EngineError(
                f"a context of {engine.n_ctx} tokens cannot hold persona {persona.name!r} "
                f"({len(conversation.head)} tokens of frame, {reply_room} for a reply): "
                "raise --ctx or shorten the persona's preamble and examples"
            )
        self.persona, self.engine, self.frame = persona, engine, frame
        self.conversation = conversation
        if self.speaker is not None:
            self.speaker.use(persona.speech)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> Appliance:
        if self.journal is not None:
            self._restore(self.journal)
        self.link.open()
        self._prefill("")
        return self

    def _restore(self, journal: Journal) -> None:
        """After a crash or power cut: the link's sequence, the conversation, the line typed."""
        state = journal.link_state()
        if state is not None:
            self.link.restore(*state)
        for message, reply in journal.exchanges():
            self.conversation.add(message, reply, Reply(stop_reason="restored"))
        printing = journal.printing()
        if printing is not None:  # the typewriter may still be striking it from its buffer
            self.reply_turn, text, _, self.print_start, self.print_sent = printing
            self.reply_text, self.print_seen = text, -1
        unanswered = journal.unanswered()
        if unanswered:
            self.waiting.append(unanswered)
        for batch, codes in journal.unconsumed_keys():
            for code in codes:
                self._key(code, batch)
        if state or self.conversation.exchanges or self.editor.typed:
            log.info("restored %d exchanges and %d typed characters",
                     len(self.conversation.exchanges), len(self.editor.typed))
        self._next()

    def _keys_arrived(self, boot_id: int, seq: int, codes: bytes) -> bool:
        """On the link's thread: keep the keys (durably, when journaling) before the ACK."""
        batch = 0
        if self.journal is not None:
            try:
                batch = self.journal.accept_keys(boot_id, seq, codes)
            except sqlite3.Error as e:  # not acknowledged: the typewriter sends them again
                log.error("cannot store keys (%s): the typewriter will resend them", e,
                          extra={"ERROR_KIND": "journal"})
                return False
        self.events.put(("keys", codes, batch))
        return True

    @contextmanager
    def running(self) -> Iterator[Appliance]:
        """The loop on its own thread for the duration; stopped and closed after."""
        runner = threading.Thread(target=self.run, name="appliance", daemon=True)
        runner.start()
        try:
            yield self
        finally:
            self.stop()
            runner.join()
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.reply is not None:
            self.reply.cancel()
        self.link.close()
        if self.speaker is not None:
            self.speaker.close()
        self.panel.close()

    def run(self) -> None:
        """Handle events until stop() is called."""
        while not self._stop.is_set():
            try:
                self.handle(self.events.get(timeout=LOOP_TICK))
            except queue.Empty:
                pass
            self._watchdog()
            self._track_printing()
            self.panel.show(thinking=self.engine.busy_since is not None,
                            busy=not self.idle or bool(self.link.flags & m.FLAG_PRINTING))

    def _track_printing(self) -> None:
        """Record in the journal how much of the last reply the typewriter has struck."""
        if self.journal is None or not self.reply_turn or self.print_seen >= self.print_sent:
            return
        extent = max(0, min(self.print_sent, (self.link.printed - self.print_start) % 2**32))
        if extent != self.print_seen and (self.reply is None or extent - self.print_seen >= 16):
            # Print bytes to characters of the reply's text (wrapping and bells add bytes).
            text = self.reply_text.strip()
            chars = len(text) if extent >= self.print_sent else len(text) * extent // max(
                1, self.print_sent)
            self.journal.reply_printed(self.reply_turn, chars, self.print_start,
                                       self.print_sent)
            self.print_seen = extent

    def _watchdog(self) -> None:
        """Ping systemd while this loop runs and the model worker makes progress.

        A hung generation stops the pings, and systemd restarts the service.
        """
        every = self.notifier.watchdog_every
        if every is None or time.monotonic() < self._next_ping:
            return
        if self.engine.stalled(HUNG_AFTER):
            if not self._hung:
                log.error("the model worker has made no progress for %.0f s", HUNG_AFTER,
                          extra={"ERROR_KIND": "hung_worker", "PERSONA": self.persona.name})
                self._hung = True
            return
        self._hung = False
        self.notifier.watchdog()
        self._next_ping = time.monotonic() + every

    def control(self, request: dict) -> dict:
        """A request from the control socket (on its thread): answered, or handed to the loop."""
        command = request["command"]
        if command == "status":
            return {"ok": True, "persona": self.persona.name, "link": "up" if self.link.up
                    else "down", "typewriter": self.link.peer_name, "port": self.link.port,
                    "busy": self.reply is not None, "exchanges": len(self.conversation.exchanges),
                    "replies": self.replies,
                    "context_tokens": self.engine.context_tokens, "n_ctx": self.engine.n_ctx,
                    "last_reply": self.conversation.last_reply, "overflow": self.link.overflow,
                    "persona_error": self.last_switch_error,
                    "last_reply_stats": self.last_reply_stats,
                    "speech_start_s": self.speaker.first_sentence_delays() if self.speaker
                    else [],
                    "status": self.describe()}
        if command in ("reset", "print") or (command == "say" and self.speaker is not None):
            answer: queue.Queue[dict] = queue.Queue()
            self.events.put(("control", command, str(request.get("text", "")), answer))
            return answer.get(timeout=30)
        if command == "persona" and self.switcher is not None:
            return self._switch_request(str(request.get("text", "")))
        if command in ("say", "persona"):
            return {"ok": False, "error": f"{command} is not available on this appliance yet"}
        return {"ok": False, "error": f"unknown command {command!r}: use status, reset or print"}

    def _control(self, command: str, text: str) -> dict:
        if command == "reset":
            self._reset()
            return {"ok": True}
        if not text.strip():
            return {"ok": False, "error": f"{command} needs some text"}
        if self.reply is not None:
            return {"ok": False, "error": "a reply is printing: try again when it is done"}
        if command == "say":
            self.speaker.say(text)
        else:
            self._typeset_line(text)
        return {"ok": True}

    def describe(self) -> str:
        """One line for `systemctl status`."""
        link = f"typewriter {'connected' if self.link.up else 'not answering'} on {self.link.port}"
        last = self.conversation.last_reply
        tail = f"; last reply: {last[:60]}" if last else ""
        return f"{self.persona.name}: {link}{tail}"

    @property
    def idle(self) -> bool:
        """No reply being generated and nothing left to send to the typewriter or to say."""
        return (self.reply is None and not self.waiting and self.link.unprinted == 0
                and (self.speaker is None or self.speaker.idle))

    # -- events -------------------------------------------------------------------------

    def handle(self, event: tuple) -> None:
        kind = event[0]
        if kind == "keys":
            for code in event[1]:
                self._key(code, event[2])
        elif kind == "piece" and event[1] is self.reply:
            self._print_reply(event[2])
        elif kind == "done" and event[1] is self.reply:
            self._finish_reply(event[1])
        elif kind == "control":
            event[3].put(self._control(event[1], event[2]))
        elif kind == "switch":
            self._switch(event[1], event[2])
        elif kind == "link":
            log.info("link %s", event[1], extra={"PERSONA": self.persona.name,
                                                 "LINK": event[1]})
            self.panel.link(event[1])
            self.notifier.status(self.describe())

    def _key(self, code: int, batch: int = 0) -> None:
        self.at_line_start = code == 0x0A
        ev = self.editor.press(code)
        if ev is None:
            return
        if ev.kind == "edit":
            self._prefill(ev.text)
        elif ev.kind == "submit":
            self.waiting.append(ev.text)
            if self.journal is not None:
                self.journal.user_turn(ev.text, batch)
            self._next()
        elif ev.kind == "reset":
            self._reset()
        elif ev.kind == "reprint":
            if self.reply is None and self.conversation.last_reply:
                self._typeset_line(self.conversation.last_reply)
        elif ev.kind == "next_persona" and self.switcher is not None:
            threading.Thread(target=self._switch_request, args=("next", True), daemon=True,
                             name="switch").start()
        elif ev.kind == "toggle_speech" and self.speaker is not None:
            self.speaker.toggle()
        elif ev.kind in ("next_persona", "toggle_speech"):
            log.info("%s is not available on this appliance yet", ev.kind.replace("_", " "))

    def _reset(self) -> None:
        """The reset key: stop the reply, drop what is unprinted, start a new conversation."""
        if self.reply is not None:
            self.reply.cancel()
            self.reply = None
        if self.speaker is not None:
            self.speaker.stop()
        self.link.cancel()
        self.waiting.clear()
        self.conversation.reset()
        if self.journal is not None:
            self.journal.new_conversation()
        self._prefill("")
        log.info("conversation reset")
        self._apply_pending_switch()

    def _next(self) -> None:
        if self.reply is not None or not self.waiting:
            return
        message = self.waiting.pop(0)
        prompt = self.conversation.prompt_tokens(message)
        self._unposted, self._posted_at = "", 0.0  # from here on the worker's
        self.reply = self.engine.generate(prompt, self.frame.stops, self.persona.generation,
                                          listener=self._heard)
        self.panel.show(thinking=True, busy=True)  # however quick, the model works now
        self.reply_message = message
        if self.journal is not None:
            self.reply_turn = self.journal.reply_started()
        # Exact when the typewriter is idle at submit, which it is unless it is still
        # printing something earlier.
        self.print_start, self.print_sent, self.print_seen = self.link.printed, 0, -1
        self.reply_text = ""
        if not self.at_line_start and self.printing:
            self.link.print_text("\n")
        self.typesetter.start(0)

    def _heard(self, reply: Reply, piece: Optional[str]) -> None:
        """A reply's piece, or its end (None), on the engine's worker thread.

        The first piece goes to the loop at once; later ones are batched for up
        to PIECE_BATCH seconds. Waking the loop for every token cost ~30% of
        decode speed on a 2-core board (llama.cpp's threads wait for each
        other), while the paper, at ~12 characters a second, cannot tell.
        """
        if piece is not None:
            self._unposted += piece
            if time.monotonic() - self._posted_at < PIECE_BATCH:
                return
        if self._unposted:
            self.events.put(("piece", reply, self._unposted))
            self._unposted, self._posted_at = "", time.monotonic()
        if piece is None:
            if reply.error is not None:
                log.error("generation failed: %s", reply.error,
                          extra={"ERROR_KIND": "generation", "PERSONA": self.persona.name})
            self.events.put(("done", reply))

    def _print_reply(self, piece: str) -> None:
        if not self.reply_text:
            piece = piece.lstrip()
        self.reply_text += piece
        if self.speaker is not None:
            self.speaker.feed(piece, self.print_sent)
        out = self.typesetter.feed(piece) if self.printing else ""
        if out:
            self.link.print_text(out)
            self.print_sent += len(out)
            if self.journal is not None:  # a word at a time, not a token at a time
                self.journal.reply_text(self.reply_turn, self.reply_text, self.print_start,
                                        self.print_sent)

    def _finish_reply(self, reply: Reply) -> None:
        text = self.reply_text.strip()
        tail = self.typesetter.finish()
        if self.printing:
            self.link.print_text(tail + "\n\n")
        if self.speaker is not None:
            self.speaker.finish()
        self.print_sent += len(tail)
        self.at_line_start = True
        self.conversation.add(self.reply_message, text, reply)
        if self.journal is not None:
            self.journal.reply_text(self.reply_turn, text, self.print_start, self.print_sent,
                                    done=True)
        log.info("reply: %d tokens (%s), prompt %d tokens of which %d evaluated at submit",
                 reply.tokens, reply.stop_reason, reply.prompt_tokens, reply.evaluated)
        decoding = reply.done_at - reply.first_token_at
        self.last_reply_stats = {
            "tokens": reply.tokens, "stop": reply.stop_reason,
            "prompt_tokens": reply.prompt_tokens, "evaluated_at_submit": reply.evaluated,
            "decode_tps": round((reply.tokens - 1) / decoding, 2) if reply.tokens > 1 and
            decoding > 0 else None}
        self.reply = None
        self.replies += 1
        self.on_reply(text, reply)
        self._apply_pending_switch()
        self.notifier.status(self.describe())
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
        if not self.printing and self.speaker is not None:
            self.speaker.say(text)
            return
        self.typesetter.start(0)
        prefix = "" if self.at_line_start else "\n"
        body = self.typesetter.feed(text) + self.typesetter.finish()
        self.link.print_text(prefix + body + "\n\n")
        self.at_line_start = True

    # -- switching persona --------------------------------------------------------------

    def _switch_request(self, request: str, on_paper: bool = False) -> dict:
        """Off the loop: validate (and maybe load) the persona while this one serves."""
        assert self.switcher is not None
        try:
            current = self.switcher.installed_name(self.persona)
            name = self.switcher.target(request, current or "")
            if name == current:
                return {"ok": True, "persona": self.persona.name, "note": "already active"}
            plan = self.switcher.prepare(name, self.engine.model_path)
        except SwitchError as e:
            return self._switch_failed(str(e), on_paper)
        answer: queue.Queue[dict] = queue.Queue()
        self.events.put(("switch", plan, answer))
        result = answer.get(timeout=SWITCH_TIMEOUT)
        if not result["ok"]:
            return self._switch_failed(result["error"], on_paper)
        return result

    def _switch_failed(self, error: str, on_paper: bool) -> dict:
        log.error("persona not switched: %s", error, extra={"ERROR_KIND": "persona"})
        self.last_switch_error = error
        if on_paper:
            self.events.put(("control", "print", f"(persona not switched: {error})"[:200],
                             queue.Queue()))
        return {"ok": False, "error": error}

    def _switch(self, plan: Plan, answer: queue.Queue) -> None:
        """On the loop, between replies: the new persona takes over, or the old one stays."""
        if self.reply is not None:
            self._pending_switch = (plan, answer)
            return
        old_persona, old_engine = self.persona, self.engine
        engine = plan.engine
        try:
            if engine is None:  # too little memory for both: the old model goes first
                old_engine.close()
                engine = self.switcher.load(plan.persona)
            self._adopt(plan.persona, engine)
        except (SwitchError, EngineError) as e:
            if engine is not None:
                engine.close()
            if plan.engine is None:
                self._adopt(old_persona, self.switcher.load(old_persona))
            answer.put({"ok": False, "error": str(e)})
            return
        if plan.engine is not None:
            old_engine.close()
        if self.journal is not None:
            self.journal.new_conversation()
        self.switcher.activated(plan.name)
        self.last_switch_error = ""
        log.info("persona switched to %s (%s)", plan.persona.name, plan.name,
                 extra={"PERSONA": plan.persona.name})
        self.notifier.status(self.describe())
        self._prefill(self.editor.text)
        answer.put({"ok": True, "persona": plan.persona.name})

    def _apply_pending_switch(self) -> None:
        if self._pending_switch is not None and self.reply is None:
            pending, self._pending_switch = self._pending_switch, None
            self._switch(*pending)
