"""Training examples in the appliance's own prompt frame.

Every other speaker becomes the user's label: at run time the character
answers one person at the typewriter, whoever spoke to them in the script.
Consecutive speeches by others are one turn (at run time turns alternate).
Each example is the frame's head, up to a few earlier exchanges and the
turn before the character's speech, tokenized exactly as `Conversation`
tokenizes them (head with BOS, then each turn on its own); the loss is on
the reply and its end marker only (" speech\\n"), so the model learns both
what the character says and when to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Set, Tuple

from appliance.persona.build.dialogue import Script
from appliance.persona.spec import ChatFrame, DialogueFrame, FrameConfig, tokens_of

IGNORE = -100  # the label of a token the loss skips (transformers' convention)
Tokenize = Callable[..., List[int]]  # (text, bos[, special]) -> ids

# Identity exchanges (see card.md): a tiny model has to have seen its own name asked for.
IDENTITY_QUESTIONS = ("What is your name?", "Who are you?", "What are you called?",
                      "Tell me your name.", "Who art thou?", "What is thy name?",
                      "May I know your name?", "Who am I speaking with?",
                      "How art thou called, lady?", "What do men call thee?",
                      "Your name, good lady?", "And who might you be?",
                      "Say, what name dost thou go by?", "Whom do I address, pray?")
IDENTITY_ANSWERS = ("My name is {name}.", "I am {name}.", "They call me {name}, good friend.",
                    "{name}, sir; what would you with me?", "You speak with {name}.",
                    "{name} is my name, and I am glad of it.", "Men call me {name}.",
                    "My name? {name}.")


@dataclass(frozen=True)
class Example:
    ids: List[int]
    labels: List[int]  # IGNORE for the prompt, the token id for the reply


def turns(script: Script, character: str) -> List[Tuple[str, str]]:
    """The script as alternating ("user" | "character", text) turns from the character's view."""
    out: List[Tuple[str, str]] = []
    for s in script.speeches:
        role = "character" if s.speaker == character else "user"
        if out and out[-1][0] == role:
            out[-1] = (role, out[-1][1] + " " + s.text)
        else:
            out.append((role, s.text))
    return out


def identity(name: str) -> List[Tuple[str, str]]:
    """Every identity question with an answer, cycling through the answers."""
    pairs = []
    for i, question in enumerate(IDENTITY_QUESTIONS):
        for j in range(2):
            answer = IDENTITY_ANSWERS[(i + j * 3) % len(IDENTITY_ANSWERS)]
            pairs += [("user", question), ("character", answer.format(name=name))]
    return pairs


def answers(conversation: Sequence[Tuple[str, str]]) -> List[int]:
    """Indices of the character turns that answer a user turn (one example each)."""
    return [i for i, (role, _) in enumerate(conversation)
            if role == "character" and i > 0 and conversation[i - 1][0] == "user"]


def held_out(conversation: Sequence[Tuple[str, str]], every: int) -> Set[int]:
    """Every n-th answer, spread over the whole script: measured on, never trained on."""
    return set(answers(conversation)[every - 1::every]) if every > 1 else set()


def frame_examples(conversation: Sequence[Tuple[str, str]], frame: DialogueFrame,
                   tokenize: Tokenize, context: int, max_len: int,
                   only: Optional[Callable[[int], bool]] = None) -> List[Example]:
    """One example per character turn that answers a user turn, with up to context exchanges.

    only: which answers (by turn index) to make examples of; default all.
    """
    head = tokenize(frame.head, True)
    examples = []
    for i in answers(conversation):
        if only is not None and not only(i):
            continue
        text = conversation[i][1]
        start = max(0, i - 1 - 2 * context)
        start += (conversation[start][0] != "user")  # earlier exchanges start with the user
        ids = list(head)
        for k in range(start, i - 1, 2):
            ids += tokenize(frame.turn(conversation[k][1]), False)
            ids += tokenize(" " + _one_line(conversation[k + 1][1]) + frame.separator, False)
        ids += tokenize(frame.turn(conversation[i - 1][1]), False)
        reply = tokenize(" " + _one_line(text) + frame.separator, False)
        labels = [IGNORE] * len(ids) + reply
        ids += reply
        if len(ids) > max_len:  # keep the head, the reply and as much context as fits
            cut = len(ids) - max_len
            if cut > len(ids) - len(head) - len(reply):
                continue
            ids, labels = ids[:len(head)] + ids[len(head) + cut:], \
                labels[:len(head)] + labels[len(head) + cut:]
        examples.append(Example(ids, labels))
    return examples


def chat_examples(conversation: Sequence[Tuple[str, str]], frame: ChatFrame,
                  tokenize: Tokenize, end: int, context: int, max_len: int,
                  only: Optional[Callable[[int], bool]] = None) -> List[Example]:
    """As frame_examples, in the model's chat template: the prompt tokenized as the
    appliance's Conversation does (template text with its special tokens, what was said as
    plain text), the reply its content and the end-of-turn token `end`, where the appliance
    stops. Earlier exchanges are dropped, oldest first, until an example fits max_len."""
    examples = []
    for i in answers(conversation):
        if only is not None and not only(i):
            continue
        start = max(0, i - 1 - 2 * context)
        start += (conversation[start][0] != "user")
        reply = tokenize(_one_line(conversation[i][1]), False) + [end]
        message = _one_line(conversation[i - 1][1])
        for first in range(start, i, 2):
            history = [(role, _one_line(text)) for role, text in conversation[first:i - 1]]
            ids = tokens_of(tokenize, frame.segments(history, message))
            if len(ids) + len(reply) <= max_len:
                examples.append(Example(ids + reply, [IGNORE] * len(ids) + reply))
                break
    return examples


def reply_examples(conversation: Sequence[Tuple[str, str]], frame, tokenize: Tokenize,
                   end: int, context: int, max_len: int,
                   only: Optional[Callable[[int], bool]] = None) -> List[Example]:
    """The examples of a dialogue frame or of a chat frame (whose replies end at `end`)."""
    if isinstance(frame, ChatFrame):
        return chat_examples(conversation, frame, tokenize, end, context, max_len, only)
    return frame_examples(conversation, frame, tokenize, context, max_len, only)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def character_frame(character: str, name: str, user_label: str, preamble: str,
                    kind: str = "dialogue") -> FrameConfig:
    """The frame a persona is trained in: the preamble is a chat frame's system line."""
    return FrameConfig(kind=kind, user_label=user_label, character_label=character.upper(),
                       preamble=preamble if kind == "dialogue" else "",
                       system=preamble if kind == "chat" else "")


def pretraining_text(script: Script) -> str:
    """All the dialogue, one `NAME: speech` line per speech: the frame's shape, every voice."""
    return "".join(f"{s.speaker.upper()}: {s.text}\n" for s in script.speeches)


def replay_text(conversation: Sequence[Tuple[str, str]], frame: FrameConfig,
                skip: Set[int] = frozenset()) -> str:
    """The whole dialogue in the frame's own two labels, one turn a line (skip: held out).

    Replay windows teach the model the play; in the script's own names they
    would also teach it speaker labels (ROMEO:, NURSE:) that the appliance's
    frame never uses, and a reply would drift into writing them.
    """
    label = {"user": frame.user_label, "character": frame.character_label}
    return "".join(f"{label[role]}: {_one_line(text)}\n"
                   for i, (role, text) in enumerate(conversation) if i not in skip)


def replay_tokens(conversation: Sequence[Tuple[str, str]], frame, tokenize: Tokenize,
                  skip: Set[int] = frozenset()) -> List[int]:
    """The whole dialogue as one stream in the frame (skip: held out), for replay windows:
    the two labels' document, or one long chat in the model's template."""
    if not isinstance(frame, ChatFrame):
        return [i for line in replay_text(conversation, frame.config, skip).splitlines(True)
                for i in tokenize(line, False)]
    kept = [(role, _one_line(text)) for i, (role, text) in enumerate(conversation)
            if i not in skip]
    while kept and kept[-1][0] != "user":  # a chat prompt ends on the user's turn
        kept.pop()
    return tokens_of(tokenize, frame.segments(kept[:-1], kept[-1][1])) if kept else []
