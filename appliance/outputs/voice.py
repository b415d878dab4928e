"""The voice as an output: the reply spoken sentence by sentence, paced to the paper."""

from __future__ import annotations

from typing import Dict, Optional

from appliance.outputs.base import Output
from appliance.outputs.paper import Paper
from appliance.outputs.speech import Speaker


class Voice(Output):
    """Speaks what the loop shows. With paper, a sentence waits until the typewriter has
    struck its start; without it (a typewriter with no print mechanism) lines are spoken
    too."""

    speaks = True

    def __init__(self, speaker: Speaker, paper: Optional[Paper] = None):
        super().__init__()
        self.speaker = speaker
        self.paper = paper
        if paper is not None:
            speaker.paper = lambda: paper.struck

    def use(self, persona) -> None:
        self.speaker.use(persona.speech)

    def reply_piece(self, piece: str) -> None:
        self.speaker.feed(piece, None if self.paper is None else self.paper.mark)

    def reply_ended(self) -> None:
        self.speaker.finish()

    def line(self, text: str) -> None:
        if self.paper is None:
            self.speaker.say(text)

    def say(self, text: str) -> None:
        self.speaker.say(text)

    def function(self, name: str) -> bool:
        if name == "toggle_speech":
            self.speaker.toggle()
            return True
        return False

    def stop(self) -> None:
        self.speaker.stop()

    def status(self) -> Dict:
        return {"speech_start_s": self.speaker.first_sentence_delays()}

    @property
    def idle(self) -> bool:
        return self.speaker.idle

    def close(self) -> None:
        self.speaker.close()
