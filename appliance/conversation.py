"""What has been said so far, and the prompt for what comes next."""

from __future__ import annotations

from typing import Callable, List, Tuple


class Conversation:
    """The exchanges between the person and the character, kept within a token budget.

    When the next prompt would not fit the budget the oldest exchanges are
    dropped; the persona's frame (preamble, examples) always stays.
    """

    def __init__(self, frame, count_tokens: Callable[[str], int], budget: int):
        self.frame = frame
        self.count_tokens = count_tokens
        self.budget = budget
        self.history: List[Tuple[str, str]] = []

    def prompt(self, message: str) -> str:
        while True:
            text = self.frame.render(self.history, message)
            if not self.history or self.count_tokens(text) <= self.budget:
                return text
            del self.history[:2]

    def add(self, message: str, reply: str) -> None:
        self.history += [("user", message), ("character", reply)]

    @property
    def last_reply(self) -> str:
        for role, text in reversed(self.history):
            if role == "character":
                return text
        return ""

    def reset(self) -> None:
        self.history.clear()
