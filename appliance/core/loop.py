"""The appliance loop: keys -> line editor -> conversation -> engine -> outputs.

Everything that changes the appliance's state happens on the thread that calls
`Appliance.run`; the link thread, the engine worker, the control socket and the
switch worker only post events (appliance.core.events) to it. Each turn of the
loop is the same phases: one event, the watchdog, the print accounting, the
outputs' `show`.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

from appliance.core.conversation import Conversation
from appliance.core.events import (
    Control,
    Done,
    Event,
    Keys,
    LinkChanged,
    Piece,
    SwitchFailed,
    SwitchReady,
)
from appliance.core.line_editor import LineEditor
from appliance.engine.worker import Engine, EngineError, Reply
from appliance.outputs.base import Output
from appliance.outputs.panel import NoPanel
from appliance.outputs.paper import NoPaper, Paper
from appliance.outputs.speech import Speaker
from appliance.outputs.voice import Voice
from appliance.persona.spec import Persona, make_frame
from appliance.persona.switcher import SWITCH_TIMEOUT, Switcher, SwitchError, SwitchWorker
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
    """One persona answering one typewriter, through a list of outputs."""

    def __init__(self, persona: Persona, engine: Engine, port: str, width: int = 65,
                 prefill: bool = True, journal: Optional[Journal] = None,
                 notifier: Optional[Notifier] = None, double_return: bool = True,
                 switcher: Optional[Switcher] = None, speaker: Optional[Speaker] = None,
                 panel: Optional[NoPanel] = None, printing: bool = True):
        self.prefill = prefill
        self.events: queue.Queue[Event] = queue.Queue()
        self.link = Link(port, on_keys=self._keys_arrived,
                         on_change=lambda state: self.events.put(LinkChanged(state)))
        # printing False: no print mechanism, the replies are only spoken
        self.paper = Paper(self.link, width) if printing or speaker is None else NoPaper()
        self.outputs: List[Output] = outputs_for(self.paper, speaker, panel or NoPanel())
        for output in self.outputs:
            output.on_key = lambda code: self.events.put(Keys(bytes([code])))
        self._adopt(persona, engine)
        self.switcher = switcher
        self._switches = SwitchWorker() if switcher is not None else None
        self._pending_switch: Optional[SwitchReady] = None  # until the reply ends
        self.last_switch_error = ""
        self.last_reply_stats: dict = {}
        self.editor = LineEditor(double_return=double_return)
        self.journal = journal
        self.notifier = notifier or Notifier({})
        self._next_ping = 0.0
        self._hung = False
        self.reply_turn = 0
        self.print_seen = -1  # the extent last written to the journal
        self.reply: Optional[Reply] = None
        self.reply_text = ""
        self._unposted = ""  # reply text the worker has not posted yet
        self._posted_at = 0.0
        self.waiting: list = []
        self.replies = 0
        self.at_line_start = True  # the last key was a return: the message may be whole
        self._stop = threading.Event()
        self._handlers: dict = {Keys: self._keys, Piece: self._piece, Done: self._done,
                                Control: self._control_event, SwitchReady: self._switch,
                                SwitchFailed: self._switch_failed, LinkChanged: self._link}

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
        self._each("use", persona)

    def _each(self, hook: str, *args) -> None:
        """Call one hook on every output, in list order."""
        for output in self.outputs:
            getattr(output, hook)(*args)

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
            self.reply_turn, text, _, self.paper.start, self.paper.sent = printing
            self.reply_text, self.print_seen = text, -1
        unanswered = journal.unanswered()
        if unanswered:
            self.waiting.append(unanswered)
        for batch, start, codes in journal.unconsumed_keys():
            for i, code in enumerate(codes):
                self._key(code, batch, start + i + 1)
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
        self.events.put(Keys(codes, batch))
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
        self._each("close")

    def run(self) -> None:
        """Handle events until stop() is called, in the same phases each turn."""
        while not self._stop.is_set():
            try:
                self.handle(self.events.get(timeout=LOOP_TICK))
            except queue.Empty:
                pass
            self._watchdog()
            self._track_printing()
            self._each("show", self.engine.busy_since is not None,
                       not self.idle or bool(self.link.flags & m.FLAG_PRINTING))

    def _track_printing(self) -> None:
        """Record in the journal how much of the last reply the typewriter has struck."""
        sent = self.paper.sent
        if self.journal is None or not self.reply_turn or self.print_seen >= sent:
            return
        extent = max(0, min(sent, self.paper.struck))
        if extent != self.print_seen and (self.reply is None or extent - self.print_seen >= 16):
            # Print bytes to characters of the reply's text (wrapping and bells add bytes).
            text = self.reply_text.strip()
            chars = len(text) if extent >= sent else len(text) * extent // max(1, sent)
            self.journal.reply_printed(self.reply_turn, chars, self.paper.start, sent)
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
        speaks = any(output.speaks for output in self.outputs)
        if command == "status":
            link = "refused" if self.link.refused else "up" if self.link.up else "down"
            status = {"ok": True, "persona": self.persona.name, "link": link,
                      "link_refused": self.link.refused, "typewriter": self.link.peer_name,
                      "port": self.link.port,
                      "busy": self.reply is not None, "idle": self.idle,
                      "exchanges": len(self.conversation.exchanges), "replies": self.replies,
                      "context_tokens": self.engine.context_tokens, "n_ctx": self.engine.n_ctx,
                      "last_reply": self.conversation.last_reply,
                      "overflow": self.link.overflow, "persona_error": self.last_switch_error,
                      "last_reply_stats": self.last_reply_stats, "speech_start_s": [],
                      "status": self.describe()}
            for output in self.outputs:
                status.update(output.status())
            return status
        if command in ("reset", "print") or (command == "say" and speaks):
            answer: queue.Queue[dict] = queue.Queue()
            self.events.put(Control(command, str(request.get("text", "")), answer))
            return answer.get(timeout=30)
        if command == "persona" and self._switches is not None:
            return self._switch_request(str(request.get("text", "")))
        if command in ("say", "persona"):
            return {"ok": False, "error": f"{command} is not available on this appliance yet"}
        return {"ok": False, "error": f"unknown command {command!r}: use status, reset or print"}

    def _control_event(self, event: Control) -> None:
        event.answer.put(self._control(event.command, event.text))

    def _control(self, command: str, text: str) -> dict:
        if command == "reset":
            self._reset()
            return {"ok": True}
        if not text.strip():
            return {"ok": False, "error": f"{command} needs some text"}
        if self.reply is not None:
            return {"ok": False, "error": "a reply is printing: try again when it is done"}
        self._each("say" if command == "say" else "line", text)
        return {"ok": True}

    def describe(self) -> str:
        """One line for `systemctl status`."""
        if self.link.refused:
            link = f"typewriter refused on {self.link.port}: {self.link.refused}"
        else:
            link = (f"typewriter {'connected' if self.link.up else 'not answering'} on "
                    f"{self.link.port}")
        last = self.conversation.last_reply
        tail = f"; last reply: {last[:60]}" if last else ""
        return f"{self.persona.name}: {link}{tail}"

    @property
    def idle(self) -> bool:
        """No reply being generated and nothing left to print or to say."""
        return (self.reply is None and not self.waiting
                and all(output.idle for output in self.outputs))

    # -- events -------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        self._handlers[type(event)](event)

    def _keys(self, event: Keys) -> None:
        for i, code in enumerate(event.codes):
            self._key(code, event.batch, i + 1)

    def _piece(self, event: Piece) -> None:
        if event.reply is self.reply:
            self._print_reply(event.text)

    def _done(self, event: Done) -> None:
        if event.reply is self.reply:
            self._finish_reply(event.reply)

    def _link(self, event: LinkChanged) -> None:
        log.info("link %s", event.state, extra={"PERSONA": self.persona.name,
                                                "LINK": event.state})
        self._each("link", event.state)
        self.notifier.status(self.describe())

    def _key(self, code: int, batch: int = 0, offset: Optional[int] = None) -> None:
        """One key; `offset` counts the keys of its journal batch up to and including it."""
        self.at_line_start = code == 0x0A
        self._each("typed", code)
        ev = self.editor.press(code)
        if ev is None:
            return
        if ev.kind == "edit":
            self._prefill(ev.text)
        elif ev.kind == "submit":
            self.waiting.append(ev.text)
            if self.journal is not None:
                self.journal.user_turn(ev.text, batch, offset)
            self._next()
        elif ev.kind == "reset":
            self._reset()
        elif ev.kind == "reprint":
            if self.reply is None and self.conversation.last_reply:
                self._each("line", self.conversation.last_reply)
        elif ev.kind == "next_persona" and self._switches is not None:
            self._switch_request("next", on_paper=True, wait=False)
        elif not any(output.function(ev.kind) for output in self.outputs):
            log.info("%s is not available on this appliance yet", ev.kind.replace("_", " "))

    def _reset(self) -> None:
        """The reset key: stop the reply, drop what is unprinted, start a new conversation."""
        if self.reply is not None:
            self.reply.cancel()
            self.reply = None
        self._each("stop")
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
        self._each("show", True, True)  # however quick, the model works now
        self.reply_message = message
        if self.journal is not None:
            self.reply_turn = self.journal.reply_started()
        self.print_seen = -1
        self.reply_text = ""
        self._each("reply_started")

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
            self.events.put(Piece(reply, self._unposted))
            self._unposted, self._posted_at = "", time.monotonic()
        if piece is None:
            if reply.error is not None:
                log.error("generation failed: %s", reply.error,
                          extra={"ERROR_KIND": "generation", "PERSONA": self.persona.name})
            self.events.put(Done(reply))

    def _print_reply(self, piece: str) -> None:
        if not self.reply_text:
            piece = piece.lstrip()
        self.reply_text += piece
        sent = self.paper.sent
        self._each("reply_piece", piece)
        if self.journal is not None and self.paper.sent != sent:  # a word at a time
            self.journal.reply_text(self.reply_turn, self.reply_text, self.paper.start,
                                    self.paper.sent)

    def _finish_reply(self, reply: Reply) -> None:
        text = self.reply_text.strip()
        self._each("reply_ended")
        self.conversation.add(self.reply_message, text, reply)
        if self.journal is not None:
            self.journal.reply_text(self.reply_turn, text, self.paper.start, self.paper.sent,
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
        self.at_line_start = True
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

    # -- switching persona --------------------------------------------------------------

    def _switch_request(self, request: str, on_paper: bool = False, wait: bool = True) -> dict:
        """Validate (and maybe load) the persona on the switch worker while this one serves.

        `wait`: block until the switch is done or refused (the control socket's
        thread); a key press does not wait.
        """
        answer: queue.Queue[dict] = queue.Queue()
        current = self.switcher.installed_name(self.persona)
        engine = self.engine

        def prepare() -> None:
            done: queue.Queue[dict] = queue.Queue()
            try:
                name = self.switcher.target(request, current or "")
                if name == current:
                    answer.put({"ok": True, "persona": self.persona.name,
                                "note": "already active"})
                    return
                plan = self.switcher.prepare(name, engine.model_path, engine)
                event = SwitchReady(plan, on_paper, done)
            except SwitchError as e:
                event = SwitchFailed(str(e), on_paper, done)
            self.events.put(event)
            answer.put(done.get(timeout=SWITCH_TIMEOUT))  # the loop's word, once it acted

        if not self._switches.start(prepare):
            return {"ok": False, "error": "a persona switch is already under way: try again "
                    "when it is done"}
        return answer.get(timeout=SWITCH_TIMEOUT) if wait else {"ok": True}

    def _switch_failed(self, event: SwitchFailed) -> None:
        log.error("persona not switched: %s", event.error, extra={"ERROR_KIND": "persona"})
        self.last_switch_error = event.error
        if event.on_paper and self.reply is None:
            self._each("line", f"(persona not switched: {event.error})"[:200])
        event.done.put({"ok": False, "error": event.error})

    def _switch(self, event: SwitchReady) -> None:
        """On the loop, between replies: the new persona takes over, or the old one stays."""
        if self.reply is not None:
            self._pending_switch = event
            return
        plan = event.plan
        old_persona, old_engine = self.persona, self.engine
        engine = plan.engine
        try:
            if plan.shares_base:  # the same base: only the adapter changes (tens of ms)
                engine = self.switcher.swap_onto(old_engine, plan.persona)
            elif engine is None:  # too little memory for both: the old model goes first
                old_engine.close()
                engine = self._pinging(lambda: self.switcher.load(plan.persona))
            self._adopt(plan.persona, engine)
        except (SwitchError, EngineError) as e:
            if plan.shares_base:
                self._adopt(old_persona, self.switcher.swap_onto(old_engine, old_persona))
            else:
                if engine is not None:
                    engine.close()
                if plan.engine is None:
                    self._adopt(old_persona,
                                self._pinging(lambda: self.switcher.load(old_persona)))
            self._switch_failed(SwitchFailed(str(e), event.on_paper, event.done))
            return
        if engine is not old_engine:
            old_engine.close()
        if self.journal is not None:
            self.journal.new_conversation()
        self.switcher.activated(plan.name)
        self.last_switch_error = ""
        log.info("persona switched to %s (%s)", plan.persona.name, plan.name,
                 extra={"PERSONA": plan.persona.name})
        self.notifier.status(self.describe())
        self._prefill(self.editor.text)
        event.done.put({"ok": True, "persona": plan.persona.name})

    def _pinging(self, load: Callable[[], Engine]) -> Engine:
        """Load a model on the loop's behalf, pinging the watchdog until it is loaded."""
        done: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                done.put((load(), None))
            except BaseException as e:  # handed to the loop, which raises it
                done.put((None, e))

        threading.Thread(target=work, name="load", daemon=True).start()
        while True:
            try:
                engine, error = done.get(timeout=LOOP_TICK)
                break
            except queue.Empty:
                if self.notifier.watchdog_every is not None:
                    self.notifier.watchdog()
        if error is not None:
            raise error
        return engine

    def _apply_pending_switch(self) -> None:
        if self._pending_switch is not None and self.reply is None:
            pending, self._pending_switch = self._pending_switch, None
            self._switch(pending)


def outputs_for(paper: Output, speaker: Optional[Speaker], panel: Output) -> List[Output]:
    """The outputs, in the order the loop calls them: paper, voice, panel (one place)."""
    outputs = [paper]
    if speaker is not None:
        outputs.append(Voice(speaker, paper if isinstance(paper, Paper) else None))
    outputs.append(panel)
    return outputs
