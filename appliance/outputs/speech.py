"""The typewriter's voice: replies spoken sentence by sentence as they stream.

One worker thread with its own queue renders each finished sentence to a WAV
file with espeak-ng and hands it to a sink: a player process (`aplay`) on a
sound card, or numbered files in a folder where there is none. A player
process can be killed the moment the reset key is pressed, and its exit
status tells whether the sound card took the sentence.

espeak-ng runs as a command, not through pyttsx3: pyttsx3 2.99 keeps only the
last of several utterances queued before one `runAndWait`, reports a failed
playback as completed and blocks in `say` for the whole playback; seen here
besides, its `save_to_file` wrote every second file empty (a bare 44-byte
header), and a rate set between two utterances took effect only sometimes.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Deque, List, NamedTuple, Optional, Sequence, Tuple, Union

from appliance.errors import UserError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Speech:
    """How the persona sounds when the appliance speaks; None leaves the config's choice."""

    voice: Optional[str] = None
    rate: Optional[int] = None  # words per minute
    pitch: Optional[int] = None  # 0..100, 50 is the voice's own


DEFAULT = Speech(voice="en-us", rate=175, pitch=50)
LONG_SENTENCE = 160  # characters: a sentence this long is spoken up to its last comma
PAPER_STALL = 2.0  # seconds the paper may stand still before the voice goes on without it
_END = re.compile(r"[.!?]+[\"')\]]*\s|\n")
_CLAUSE = re.compile(r"[,;:]\s")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "mt", "sr", "jr", "vs", "prof", "capt"}


class SpeechError(UserError):
    """Speech cannot go on as asked; one line naming the problem and the fix."""


class Sentence(NamedTuple):
    text: str
    start: int  # where it starts in the reply, in characters
    arrived: float  # when its last character arrived: its generation ended then


class Sentences:
    """Cuts streamed text into sentences, each as soon as its end is certain.

    A full stop is an end only once the next character (a space) shows it is
    not part of "3.14" or "Mr.".
    """

    def __init__(self) -> None:
        self.text = ""
        self.cut = 0  # characters of the reply before self.text
        self._arrivals: List[Tuple[int, float]] = []  # (end offset in text, time)

    @property
    def fed(self) -> int:
        return self.cut + len(self.text)

    def feed(self, piece: str, now: float) -> List[Sentence]:
        self.text += piece
        self._arrivals.append((len(self.text), now))
        found = []
        start = 0
        for match in _END.finditer(self.text):
            words = self.text[start:match.start()].split()
            if match.group()[0] == "." and words and words[-1].lower() in _ABBREVIATIONS:
                continue
            found.append((start, match.start() + len(match.group().rstrip())))
            start = match.end()
        if not found and len(self.text) > LONG_SENTENCE:
            clauses = list(_CLAUSE.finditer(self.text))
            if clauses:
                found.append((0, clauses[-1].end() - 1))
        return self._take(found)

    def finish(self, now: float) -> List[Sentence]:
        """The end of the reply: what is left is the last sentence."""
        return self._take([(0, len(self.text))])

    def _take(self, spans: Sequence[Tuple[int, int]]) -> List[Sentence]:
        out = []
        for start, end in spans:
            text = " ".join(self.text[start:end].split())
            if text:
                first = start + len(self.text[start:end]) - len(self.text[start:end].lstrip())
                # Its last character arrived with the first piece that reached it.
                last = len(self.text[:end].rstrip())
                arrived = next(t for offset, t in self._arrivals if offset >= last)
                out.append(Sentence(text, self.cut + first, arrived))
        if spans:
            cut = spans[-1][1]
            self.text = self.text[cut:]
            self.cut += cut
            self._arrivals = [(o - cut, t) for o, t in self._arrivals if o > cut]
        return out


# -- voices: text to a WAV file --------------------------------------------------------------


class Espeak:
    """espeak-ng, one process per sentence writing a WAV file."""

    def __init__(self, program: str = "espeak-ng") -> None:
        self.program = shutil.which(program)
        if self.program is None:
            raise SpeechError(f"{program} is not installed: apt-get install espeak-ng")
        listing = self._run("--voices")
        self.voices = {}
        for line in listing.splitlines()[1:]:
            # Pty Language Age/Gender VoiceName File Other-languages
            _, language, _, name, file = (line.split() + [""] * 5)[:5]
            for key in (language, name, file, file.rsplit("/", 1)[-1]):
                self.voices.setdefault(key.lower(), file)
        self.settings: List[str] = []

    def _run(self, *args: str, text: Optional[str] = None) -> str:
        try:
            done = subprocess.run([self.program, *args], input=text, capture_output=True,
                                  text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SpeechError(f"espeak-ng failed ({e}): check `espeak-ng 'hello'`") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            raise SpeechError(f"espeak-ng failed ({why}): check `espeak-ng 'hello'`")
        return done.stdout

    def configure(self, speech: Speech) -> None:
        """espeak-ng speaks an unknown voice with its default one, silently: check first."""
        name = (speech.voice or "").split("+")[0]  # en-gb+f3: a voice and a variant
        if name.lower() not in self.voices:
            examples = ", ".join(n for n in ("en-us", "en-gb", "de", "fr") if n in self.voices)
            raise SpeechError(f"voice {speech.voice!r} does not exist in espeak-ng: pick one "
                              f"from `espeak-ng --voices` (e.g. {examples})")
        self.settings = ["-v", str(speech.voice), "-s", str(speech.rate), "-p", str(speech.pitch)]

    def render(self, text: str, path: Path) -> None:
        self._run(*self.settings, "-w", str(path), "--stdin", text=text)


class Piper:
    """A Piper neural voice (optional: `pip install piper-tts` and a .onnx voice model)."""

    def __init__(self, model: Path) -> None:
        try:
            from piper import PiperVoice
        except ImportError:
            raise SpeechError(f"piper_model {model} is set but piper-tts is not installed: "
                              "pip install piper-tts, or remove piper_model") from None
        try:
            self.voice = PiperVoice.load(str(model))
        except Exception as e:  # onnxruntime and file errors
            raise SpeechError(f"cannot load the Piper voice {model} ({e}): fix piper_model") from e

    def configure(self, speech: Speech) -> None:
        """A Piper model is one voice: voice, rate and pitch are espeak-ng's."""

    def render(self, text: str, path: Path) -> None:
        import wave

        with wave.open(str(path), "wb") as wav:
            # piper-tts 1.3 writes a file with synthesize_wav; 1.2 with synthesize.
            getattr(self.voice, "synthesize_wav", self.voice.synthesize)(text, wav)


# -- sinks: where a sentence's WAV goes -----------------------------------------------------


class SoundCard:
    """Plays each sentence with a player process on the sound card (ALSA's `aplay`)."""

    def __init__(self, command: Sequence[str] = ("aplay", "-q")) -> None:
        self.command = list(command)
        self.folder = Path(tempfile.mkdtemp(prefix="typewriter-speech-"))

    @staticmethod
    def present() -> bool:
        """A playback device and `aplay` to reach it.

        Looked for in /dev: the service cannot see /proc/asound (ProcSubset=pid).
        """
        return shutil.which("aplay") is not None and any(Path("/dev/snd").glob("pcmC*D*p"))

    def path_for(self) -> Path:
        return self.folder / "sentence.wav"  # one at a time: rendered, played, replaced

    def begin(self, path: Path, text: str) -> Optional[subprocess.Popen]:
        return subprocess.Popen([*self.command, str(path)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class WavFiles:
    """Keeps each spoken sentence as a numbered WAV file, for machines with no sound card."""

    def __init__(self, folder: Path, on_file: Callable[[Path, str], None] = lambda p, t: None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.on_file = on_file
        self.count = len(list(self.folder.glob("*.wav")))

    def path_for(self) -> Path:
        self.count += 1
        return self.folder / f"{self.count:04d}.wav"

    def begin(self, path: Path, text: str) -> Optional[subprocess.Popen]:
        self.on_file(path, text)
        return None

    def close(self) -> None:
        """The files are the output: they stay."""


# -- the speaker -----------------------------------------------------------------------------


@dataclass
class Spoken:
    """One sentence's trip: when its text was complete and when its sound began."""

    text: str
    path: Path
    completed_at: float
    started_at: float
    first: bool  # the reply's first sentence


@dataclass
class _Queued:
    text: str
    mark: Optional[int]  # the paper position it starts at, when pacing to the paper
    completed_at: float
    first: bool
    generation: int


class Speaker:
    """Speaks replies as they stream, one sentence at a time, on its own worker thread.

    `paper`, when set, returns how far the typewriter has struck the reply;
    a sentence waits until the paper has reached its start, so the voice does
    not run far ahead of what is printed.
    """

    def __init__(self, sink: Union[SoundCard, WavFiles], defaults: Speech = DEFAULT,
                 piper_model: Optional[Path] = None, voice: Optional[Callable[[], Any]] = None):
        self.sink = sink
        self.voice = voice  # makes the voice on the worker; None: Piper or Espeak
        self.defaults = replace(DEFAULT, **{k: v for k, v in defaults.__dict__.items()
                                               if v is not None})
        self.piper_model = piper_model
        self.paper: Optional[Callable[[], int]] = None
        self.enabled = True
        self.spoken: Deque[Spoken] = deque(maxlen=256)
        self._queue: queue.Queue = queue.Queue()
        self._sentences = Sentences()
        self._first = True
        self._ahead: Optional[int] = None  # paper position less reply position
        self._generation = 0
        self._lock = threading.Lock()
        self._process: Optional[subprocess.Popen] = None
        self._reported: set = set()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> Speaker:
        """Load the voice on the worker; raises SpeechError when speech cannot work at all."""
        ready: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, args=(ready,), name="speech",
                                        daemon=True)
        self._thread.start()
        error = ready.get()
        if error is not None:
            self._thread.join()
            raise error
        return self

    def use(self, speech: Speech) -> None:
        """A persona's voice, rate and pitch (unset ones: the defaults) from the next sentence."""
        given = {k: v for k, v in speech.__dict__.items() if v is not None}
        self._queue.put(replace(self.defaults, **given))

    def say(self, text: str) -> None:
        """Speak a whole text (a reprint, a message)."""
        self.feed(text)
        self.finish()

    def feed(self, piece: str, mark: Optional[int] = None) -> None:
        """Reply text as it streams; `mark` is where on the paper this piece starts."""
        if mark is not None:
            self._ahead = mark - self._sentences.fed  # line ends the typesetter added
        self._queue_sentences(self._sentences.feed(piece, time.monotonic()))

    def finish(self) -> None:
        """The reply is complete: speak what is left; the next piece starts a new reply."""
        self._queue_sentences(self._sentences.finish(time.monotonic()))
        self._sentences, self._first, self._ahead = Sentences(), True, None

    def _queue_sentences(self, sentences: List[Sentence]) -> None:
        if not self.enabled:
            return
        for sentence in sentences:
            mark = None if self._ahead is None else sentence.start + self._ahead
            self._queue.put(_Queued(sentence.text, mark, sentence.arrived, self._first,
                                    self._generation))
            self._first = False

    def stop(self) -> None:
        """Silence at once: the sentence being spoken is cut off, the queued ones dropped."""
        with self._lock:
            self._generation += 1
            if self._process is not None:
                self._process.kill()
        self._sentences, self._first, self._ahead = Sentences(), True, None

    def toggle(self) -> bool:
        """The speech key: voice off (silenced now) or on again; returns whether it is on."""
        self.enabled = not self.enabled
        if not self.enabled:
            self.stop()
        log.info("speech %s", "on" if self.enabled else "off")
        return self.enabled

    def first_sentence_delays(self) -> List[float]:
        """Seconds from each reply's first sentence being complete to its sound starting."""
        return [round(s.started_at - s.completed_at, 3) for s in self.spoken if s.first]

    @property
    def idle(self) -> bool:
        """Nothing queued, rendering or playing."""
        return self._queue.unfinished_tasks == 0

    def close(self) -> None:
        self.stop()
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.sink.close()

    # -- the worker ------------------------------------------------------------------------

    def _work(self, ready: queue.Queue) -> None:
        try:
            voice = (self.voice() if self.voice else Piper(self.piper_model)
                     if self.piper_model else Espeak())
            self._configure(voice, self.defaults)
        except UserError as e:  # SpeechError, or another voice's (laptop_voice)
            ready.put(e)
            return
        ready.put(None)
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if isinstance(item, Speech):
                    self._configure(voice, item)
                elif item.generation == self._generation:
                    self._speak(voice, item)
            except UserError as e:
                self._report(str(e))
            finally:
                self._queue.task_done()

    def _configure(self, voice, speech: Speech) -> None:
        try:
            voice.configure(speech)
        except SpeechError as e:
            if speech.voice == DEFAULT.voice:
                raise
            self._report(f"{e}; speaking with {DEFAULT.voice!r} meanwhile")
            voice.configure(replace(speech, voice=DEFAULT.voice))

    def _speak(self, voice, sentence: _Queued) -> None:
        path = self.sink.path_for()
        voice.render(sentence.text, path)
        if not path.exists() or path.stat().st_size <= 44:  # a WAV header and no sound
            raise SpeechError(f"the voice made no sound for {sentence.text[:40]!r}: check "
                              "`espeak-ng 'hello'` on this machine")
        self._wait_for_paper(sentence)
        with self._lock:
            if sentence.generation != self._generation:  # reset while it was being made
                path.unlink(missing_ok=True)
                return
            self._process = self.sink.begin(path, sentence.text)
            self.spoken.append(Spoken(sentence.text, path, sentence.completed_at,
                                      time.monotonic(), sentence.first))
        if self._process is None:
            return
        _, err = self._process.communicate()
        code, self._process = self._process.returncode, None
        if code > 0:  # killed by stop(): negative
            why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {code}"]
            raise SpeechError(f"the sound card did not play speech ({why[0]}): check `aplay -l` "
                              "and that the service user is in the audio group")

    def _wait_for_paper(self, sentence: _Queued) -> None:
        """Until the paper reaches the sentence, or stands still (paper out, link down)."""
        paper = self.paper
        if paper is None or sentence.mark is None:
            return
        last, moved = paper(), time.monotonic()
        while (sentence.mark - last) % 2**32 < 2**31 and sentence.mark != last:
            if sentence.generation != self._generation or time.monotonic() - moved > PAPER_STALL:
                return
            time.sleep(0.02)
            now = paper()
            if now != last:
                last, moved = now, time.monotonic()

    def _report(self, problem: str) -> None:
        """Each distinct problem once: a sentence at a time would flood the journal."""
        if problem not in self._reported:
            self._reported.add(problem)
            log.error("speech: %s", problem, extra={"ERROR_KIND": "speech"})


def open_speaker(defaults: Speech = DEFAULT, piper_model: Optional[str] = None,
                 files: Optional[Path] = None,
                 on_file: Callable[[Path, str], None] = lambda p, t: None,
                 voice: Optional[Callable[[], Any]] = None,
                 player: Optional[Sequence[str]] = None) -> Optional[Speaker]:
    """A started speaker on the sound card, or writing numbered WAV files into `files`.

    None, after one message, when speech cannot work: the appliance goes on printing.
    """
    if files is None and not (player or SoundCard.present()):
        problem = ("no sound card (`aplay -l` lists none, or alsa-utils is missing): connect "
                   "one and apt-get install alsa-utils")
    else:
        sink = WavFiles(files, on_file) if files else SoundCard(player) if player else SoundCard()
        try:
            return Speaker(sink, defaults, Path(piper_model) if piper_model else None,
                           voice).start()
        except UserError as e:
            sink.close()
            problem = str(e)
    log.error("speech off: %s", problem, extra={"ERROR_KIND": "speech"})
    return None


def demo_speaker(files: Optional[str] = None) -> Optional[Speaker]:
    """`typewriter demo --speak`: the sound card if there is one, else WAV files it names;
    without espeak-ng (a laptop), the laptop's own voice through pyttsx3 (laptop_voice)."""
    voice, player = None, None
    if shutil.which("espeak-ng") is None:
        from appliance.outputs import laptop_voice

        voice, player = laptop_voice.LaptopVoice, laptop_voice.player()
    folder = Path(files) if files else None
    if folder is None and not (player or SoundCard.present()):
        folder = Path(tempfile.mkdtemp(prefix="typewriter-speech-"))
    return open_speaker(files=folder, on_file=lambda path, text: print(
        f"spoken: {path}  ({text})", file=sys.stderr, flush=True), voice=voice, player=player)
