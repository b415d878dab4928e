"""`typewriter persona check`: a probe battery through the appliance's own frame.

Each probe is one message typed to the persona, answered exactly as the
appliance would answer it (the persona's frame and stops, a fresh
conversation, the engine) but with greedy decoding, so a result repeats.

Gating probes are what a persona must do on paper: give its own name when
asked in words the builder's identity examples never used (a model that only
learned those questions by rote fails: a small model left to itself calls
itself "John"), stay in the frame (its reply is one line of its own, never the
next speaker's turn), end within the length cap, and not be a parrot (it does
not echo the message, and different messages get different replies). The
classic probes (Sally-Anne false belief, Smarties
unexpected contents, few-shot topic classification) are recorded, not
gating: a model of a few million parameters is not expected to pass them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from appliance.core.conversation import Conversation
from appliance.engine.worker import Engine
from appliance.persona.spec import Persona, make_frame

# Unlike every question in build.examples.IDENTITY_QUESTIONS (a test holds them apart).
NAME_QUESTIONS = ("Pray, what do they call you, lady?", "By what name shall I know you?")
FRAME_MESSAGES = ("Good morrow.", "What news from the town?", "Where are you going tonight?",
                  "Tell me what you fear.")
# (probe, message, words any of which counts as the expected answer)
CLASSIC: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("sally-anne", "Sally puts her rock sample in the basket and goes out. Anne moves the rock "
     "sample to the box. Sally comes back. Where will she look for her rock sample first?",
     ("basket",)),
    ("smarties", "Here is a Smarties tube. I open it and it holds pencils. What will a friend "
     "who has not looked inside think it holds?", ("smarties", "sweets", "candy", "chocolate")),
    ("topic", "Sort each line by topic. 'The striker scored twice' is sport. 'Rain is coming "
     "tomorrow' is weather. 'The bank raised its rates' is money. 'The team lost the final' is",
     ("sport",)),
)
_LABEL = re.compile(r"\b[A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*)*:")
_NLL = re.compile(r"NLL per reply token: base alone ([0-9.]+), persona ([0-9.]+)")


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


class Prober:
    """Asks one persona single messages, as a fresh conversation each time."""

    def __init__(self, persona: Persona, engine: Engine):
        self.persona, self.engine = persona, engine
        self.frame = make_frame(persona, engine.chat_template, engine.bos, engine.eos)
        self.sampling = replace(persona.generation, temperature=0.0)

    def ask(self, message: str) -> Tuple[str, str, str]:
        """The reply, why it ended (stop, eos, length) and the stop string that ended it."""
        conversation = Conversation(self.frame, self.engine.tokenize, self.engine.n_ctx,
                                    self.sampling.max_tokens)
        reply = self.engine.generate(conversation.prompt_tokens(message), self.frame.stops,
                                     self.sampling)
        text = "".join(reply)
        if reply.error is not None:
            raise reply.error
        return text.strip(), reply.stop_reason, reply.stopped_at


def probes(prober: Prober) -> List[Dict]:
    persona = prober.persona
    first_name = persona.name.split()[0]
    rows: List[Dict] = []

    def row(probe: str, gating: bool, message: str, reply: str, passed: bool, why: str) -> None:
        rows.append({"probe": probe, "gating": gating, "passed": passed, "message": message,
                     "reply": reply, "why": why})

    for question in NAME_QUESTIONS:
        reply, _, _ = prober.ask(question)
        row("own name", True, question, reply, _has_word(reply, first_name),
            f"says {first_name!r}")
    replies = []
    for message in FRAME_MESSAGES:
        reply, reason, stopped_at = prober.ask(message)
        replies.append(reply)
        label = _LABEL.search(reply)
        in_frame = bool(reply) and label is None and stopped_at != f"{persona.frame.user_label}:"
        why = ("empty reply" if not reply else f"writes a turn: {label.group(0)!r}" if label
               else f"stopped at {stopped_at!r}" if not in_frame else "one line of its own")
        row("in frame", True, message, reply, in_frame, why)
        row("ends in cap", True, message, reply, reason != "length",
            f"ended by {reason} within {prober.sampling.max_tokens} tokens"
            if reason != "length" else f"still going after {prober.sampling.max_tokens} tokens")
    echoes = [m for m, r in zip(FRAME_MESSAGES, replies) if _words(r) == _words(m)]
    distinct = len({_words(r) for r in replies})
    row("not a parrot", True, " / ".join(FRAME_MESSAGES), " / ".join(replies),
        not echoes and distinct == len(replies),
        f"echoes {echoes[0]!r}" if echoes else f"{distinct} distinct replies to "
        f"{len(replies)} messages")
    for probe, message, expected in CLASSIC:
        reply, _, _ = prober.ask(message)
        row(probe, False, message, reply, any(_has_word(reply, w) for w in expected),
            "expects " + " / ".join(expected))
    return rows


def run_check(folder: Path, n_ctx: int = 1024, threads: Optional[int] = None) -> Dict:
    """Run the battery on a persona folder; the JSON-ready result."""
    persona = Persona.load(Path(folder))
    persona.check_base()
    engine = Engine(persona.model_path, n_ctx=n_ctx, n_threads=threads, seed=0,
                    adapter=persona.adapter_path).start()
    try:
        rows = probes(Prober(persona, engine))
    finally:
        engine.close()
    return {"persona": persona.name, "bundle": str(folder),
            "gating_passed": all(r["passed"] for r in rows if r["gating"]), "probes": rows,
            "nll": card_nll(Path(folder))}


def card_nll(folder: Path) -> Optional[Dict[str, float]]:
    """The held-out NLL per token the build recorded in card.md (base alone and persona)."""
    try:
        found = _NLL.search((folder / "card.md").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    return {"base": float(found.group(1)), "persona": float(found.group(2))} if found else None


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def table(result: Dict) -> str:
    """One line a probe: what was asked, the reply, and the verdict."""
    lines = [f"{'probe':<12} {'gating':<6} {'result':<6} {'message':<28} reply"]
    for r in result["probes"]:
        lines.append(f"{r['probe']:<12} {'yes' if r['gating'] else 'no':<6} "
                     f"{'pass' if r['passed'] else 'FAIL':<6} {_clip(r['message'], 28):<28} "
                     f"{_clip(r['reply'], 60)}")
    if result.get("nll"):
        lines.append(f"held-out NLL per token (card.md): persona {result['nll']['persona']:.3f}"
                     f", base alone {result['nll']['base']:.3f}")
    lines.append(f"gating probes: {'all passed' if result['gating_passed'] else 'FAILED'}")
    return "\n".join(lines)
