"""What has been said so far, as the exact tokens the model saw and sampled.

Keeping tokens rather than text means no turn is ever evaluated twice: a
reply re-tokenised from its text can come out as different tokens than the
ones sampled, and the model's cache would miss from there on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Tuple

from appliance.engine.worker import Reply
from appliance.persona.spec import tokens_of

HOLD_BACK = 2  # the last tokens typed may still merge with the next keystroke
Tokenize = Callable[..., List[int]]  # (text, bos, special=False)


@dataclass
class Exchange:
    message: str
    reply: str
    tokens: List[int] = field(default_factory=list)  # the turn and the reply, as in the cache


class Conversation:
    """The exchanges between the person and the character, within the context window.

    When the next turn and its reply would not fit, the oldest exchanges are
    dropped; the persona's frame (preamble, examples) always stays. The engine
    re-evaluates what follows the frame, during typing when prefill is on.
    """

    def __init__(self, frame, tokenize: Tokenize, n_ctx: int, reply_room: int):
        self.frame = frame
        self.tokenize = tokenize
        self.n_ctx = n_ctx
        self.reply_room = reply_room
        self.exchanges: List[Exchange] = []
        self.head = tokenize(frame.head, True) if frame.token_exact else []

    @property
    def history(self) -> List[Tuple[str, str]]:
        turns: List[Tuple[str, str]] = []
        for e in self.exchanges:
            turns += [("user", e.message), ("character", e.reply)]
        return turns

    @property
    def last_reply(self) -> str:
        return self.exchanges[-1].reply if self.exchanges else ""

    def reset(self) -> None:
        self.exchanges.clear()

    # -- prompts -----------------------------------------------------------------------

    def typing_tokens(self, partial: str) -> List[int]:
        """What can be evaluated while the person is still typing."""
        if self.frame.token_exact:
            turn = self.tokenize(self.frame.typing(partial), False)
            tokens = self._fit(turn)
        else:
            tokens = self._fit_rendered(self.frame.typing_segments, partial)
        return tokens[: max(0, len(tokens) - HOLD_BACK)]

    def prompt_tokens(self, message: str) -> List[int]:
        """The whole prompt for a submitted message; always fits with room for a reply."""
        if not self.frame.token_exact:
            return self._fit_rendered(self.frame.segments, message)
        turn = self.tokenize(self.frame.turn(message), False)
        while len(self.head) + len(turn) + self.reply_room > self.n_ctx and len(message) > 1:
            message = message[len(message) // 4 + 1 :]  # far too long: keep its end
            turn = self.tokenize(self.frame.turn(message), False)
        return self._fit(turn)

    def _context(self) -> List[int]:
        tokens = list(self.head)
        for e in self.exchanges:
            tokens += e.tokens
        return tokens

    def _fit(self, turn: List[int]) -> List[int]:
        while self.exchanges and (len(self.head) + sum(len(e.tokens) for e in self.exchanges)
                                  + len(turn) + self.reply_room > self.n_ctx):
            del self.exchanges[0]
        return self._context() + turn

    def _fit_rendered(self, segments: Callable, message: str) -> List[int]:
        """A rendered prompt that fits: the oldest exchanges go first, then, for a message
        longer than the context, its beginning (never the generation prompt at the end)."""
        def render() -> List[int]:
            return tokens_of(self.tokenize, segments(self.history, message))

        tokens = render()
        while self.exchanges and len(tokens) + self.reply_room > self.n_ctx:
            del self.exchanges[0]
            tokens = render()
        while len(tokens) + self.reply_room > self.n_ctx and len(message) > 1:
            message = message[len(message) // 4 + 1 :]  # far too long: keep its end
            tokens = render()
        return tokens

    # -- after a reply -----------------------------------------------------------------

    def add(self, message: str, reply_text: str, reply: Reply) -> None:
        """Keep the exchange; its tokens are the turn plus exactly what was sampled."""
        tokens: List[int] = []
        if self.frame.token_exact:
            tokens = self.tokenize(self.frame.turn(message), False)
            ended_cleanly = (reply.stop_reason == "stop" and reply.stopped_at ==
                             self.frame.separator and not reply.overshoot)
            if ended_cleanly:
                tokens += reply.sampled
            else:  # cut short (length, end of text, another stop): end the line ourselves
                tokens += self.tokenize(" " + reply_text + self.frame.separator, False)
        self.exchanges.append(Exchange(message, reply_text, tokens))
