"""The laptop's voice: `typewriter demo --speak` where espeak-ng is not installed.

pyttsx3 drives the laptop's own speech engine (NSSpeechSynthesizer on macOS,
libespeak-ng on Linux). It is the laptop voice only; the Pi runs the espeak-ng
command (speech.py): pyttsx3's `runAndWait` never returns after the first
utterance on a Pi 4 and deadlocks on the second call (pyttsx3 #126, #131), and
it keeps only the last of several queued utterances.

The known workaround, and the shape of a voice in speech.py (`configure`,
`render`): each sentence is rendered by a child process of its own with a fresh
engine (`save_to_file`, `runAndWait`, then the utterance's own end: the espeak
driver's loop returns before its file is written, so a child that exits at once
leaves one file in five missing or cut short), one at a time on the speaker's
worker, killed when it outlives its limit, so a hang costs one sentence and not
the voice. The speaker plays the file with a player process (`afplay` on macOS,
`aplay` on Linux) that reset kills at once.

Run as `python -m appliance.outputs.laptop_voice` it is that child: one JSON job
on stdin (text, path, voice, rate, pitch), the sound file at path, exit 0.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import List, Optional

from appliance.errors import UserError

RENDER_SECONDS = 30.0  # one sentence, rendered faster than it is spoken (~12 s for 160 chars)
INSTALL = "pip install 'typewriter-appliance[laptop]'"


class LaptopVoiceError(UserError):
    """The laptop voice cannot speak; one line naming the problem and the fix."""


def _check_hint() -> str:
    if sys.platform == "darwin":
        return "check `say hello` in a terminal"
    return "apt-get install espeak-ng (then the appliance's own voice speaks instead)"


def player() -> Optional[List[str]]:
    """The command that plays a sound file on this laptop; None: the speaker's own (`aplay`)."""
    return ["afplay"] if sys.platform == "darwin" else None


class LaptopVoice:
    """A voice for speech.Speaker, like its Espeak: pyttsx3 in a child process per sentence."""

    def __init__(self, python: str = sys.executable, timeout: float = RENDER_SECONDS) -> None:
        if importlib.util.find_spec("pyttsx3") is None:
            raise LaptopVoiceError(f"espeak-ng is not installed, nor pyttsx3 for the laptop's "
                                   f"own voice: apt-get install espeak-ng, or {INSTALL}")
        self.python, self.timeout = python, timeout
        self.settings: dict = {}
        # A driver that cannot start (no libespeak-ng on Linux) is one message now, not
        # one per sentence.
        with tempfile.TemporaryDirectory(prefix="typewriter-voice-") as folder:
            self.render("Ready.", Path(folder) / "probe.wav")

    def configure(self, speech) -> None:
        """A speech.Speech: voice (espeak-ng's names; elsewhere matched by language), rate
        (words a minute) and pitch (espeak only); what the laptop lacks, it ignores."""
        self.settings = {"voice": speech.voice, "rate": speech.rate, "pitch": speech.pitch}

    def render(self, text: str, path: Path) -> None:
        """The sentence as a WAV file at path, by a fresh engine in a child process."""
        job = json.dumps({"text": text, "path": str(path), **self.settings})
        try:
            done = subprocess.run([self.python, "-m", "appliance.outputs.laptop_voice"],
                                  input=job, capture_output=True, text=True,
                                  timeout=self.timeout)  # killed past it
        except subprocess.TimeoutExpired:
            raise LaptopVoiceError(f"the laptop voice (pyttsx3) hung on {text[:40]!r} for "
                                   f"{self.timeout:g} s and was stopped: "
                                   f"{_check_hint()}") from None
        except OSError as e:
            raise LaptopVoiceError(f"cannot start the laptop voice ({e}): {INSTALL}") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise LaptopVoiceError(f"the laptop voice (pyttsx3) failed ({why}): "
                                   f"{_check_hint()}")
        if not path.exists() or path.stat().st_size <= 44:  # a WAV header and no sound
            raise LaptopVoiceError(f"the laptop voice (pyttsx3) made no sound for "
                                   f"{text[:40]!r}: {_check_hint()}")


# -- the child: one utterance, a fresh engine --------------------------------------------------


def _voice_id(engine, wanted: Optional[str]) -> Optional[str]:
    """The engine's voice for an espeak-ng name ("en-gb", "en-gb+f3"): the same id or
    language, else one of the same language; None keeps the engine's default."""
    if not wanted:
        return None
    wanted = wanted.split("+")[0].lower().replace("_", "-")
    voices = engine.getProperty("voices") or []

    def names(voice) -> List[str]:
        languages = [str(lang).lower().replace("_", "-") for lang in voice.languages or []]
        return [str(voice.id).lower(), str(voice.name or "").lower(), *languages]

    for voice in voices:
        if wanted in names(voice) or str(voice.id).lower().endswith("/" + wanted):
            return voice.id
    base = wanted.split("-")[0]
    for voice in voices:
        if any(n.split("-")[0] == base for n in names(voice)[2:]):
            return voice.id
    return None


def _speak_to_file(job: dict) -> None:
    import pyttsx3

    engine = pyttsx3.init()
    if job.get("rate"):
        engine.setProperty("rate", int(job["rate"]))
    voice = _voice_id(engine, job.get("voice"))
    if voice is not None:
        engine.setProperty("voice", voice)
    if job.get("pitch") is not None:
        try:
            engine.setProperty("pitch", int(job["pitch"]))  # espeak's 0..100; others have none
        except (KeyError, ValueError, AttributeError):
            pass
    target = Path(job["path"])
    # NSSpeechSynthesizer writes AIFF whatever the name: convert it to the WAV asked for.
    raw = target.with_suffix(".aiff") if sys.platform == "darwin" else target
    # The espeak driver's runAndWait returns before its synthesis thread has written the
    # file (its loop ends as the job starts): wait for the utterance's own end.
    finished = threading.Event()
    engine.connect("finished-utterance", lambda **_: finished.set())
    engine.save_to_file(job["text"], str(raw))
    engine.runAndWait()
    if not finished.wait(RENDER_SECONDS - 10):
        raise RuntimeError("the engine never finished the utterance")
    if raw != target:
        subprocess.run(["afconvert", "-f", "WAVE", "-d", "LEI16", str(raw), str(target)],
                       check=True, capture_output=True)
        raw.unlink()


if __name__ == "__main__":
    try:
        _speak_to_file(json.loads(sys.stdin.read()))
    except Exception as e:  # the parent reports the last line
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
