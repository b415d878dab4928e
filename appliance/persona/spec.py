"""A persona: `persona.toml` and a GGUF model in one folder, and its prompt frame.

The model is either whole (`model = "model.gguf"`) or a LoRA adapter on a
pretrained base (`base = "smollm2-135m"`, `base_sha256`, `adapter =
"adapter.gguf"`): personas on one base share its weights, so a switch between
them swaps a few MB of adapter instead of reloading the model. The base is
named by its sha256 because an adapter is only right for the exact weights it
was trained on.

Base models (most tiny fine-tunes) get a dialogue document, one line per turn,
ending with the character's label; the reply ends at the end of its line, so
the model never types an invented next turn. Chat models get the GGUF's own
chat template, rendered in a sandbox (templates come from model files, and a
template that reaches for Python internals is an attack: CVE-2024-34359).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from appliance.engine import bases
from appliance.engine.gguf_header import is_gguf
from appliance.engine.worker import Sampling
from appliance.errors import UserError
from appliance.outputs.speech import Speech

History = Sequence[Tuple[str, str]]  # (role: "user" | "character", text)


DEFAULT_PERSONA = Path(__file__).parents[1] / "personas" / "default"  # the shipped one

class PersonaError(UserError):
    """A persona that cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class Example:
    user: str
    character: str


@dataclass(frozen=True)
class FrameConfig:
    kind: str = "dialogue"
    user_label: str = "YOU"
    character_label: str = "CHARACTER"
    preamble: str = ""
    system: str = ""
    examples: Tuple[Example, ...] = ()


@dataclass(frozen=True)
class Generation(Sampling):
    """The engine's sampling settings, plus what a persona adds to them."""

    seed: int = -1
    stop: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Persona:
    name: str
    folder: Path
    model_path: Path
    description: str = ""
    synthetic: Optional[str] = None
    frame: FrameConfig = field(default_factory=FrameConfig)
    generation: Generation = field(default_factory=Generation)
    speech: Speech = field(default_factory=Speech)
    base: Optional[str] = None  # a base persona's base: a known name or a GGUF path
    base_sha256: Optional[str] = None
    adapter_path: Optional[Path] = None  # the LoRA adapter on model_path (the base)

    @property
    def model_missing(self) -> bool:
        return not self.model_path.exists()

    def check_base(self) -> None:
        """A base persona's base is there and is the one it was trained on; else the fix.

        Reads the whole base once per file version (bases.sha256_of caches it).
        """
        if self.base is None:
            return
        where = f"{self.folder / 'persona.toml'}: base"
        fix = (f"run `typewriter model fetch {self.base}`" if self.base in bases.BASES
               else f"put the base model back at {self.model_path}")
        if not self.model_path.is_file():
            raise PersonaError(f"{where}: the base model {self.model_path} is missing: {fix}")
        found = bases.sha256_of(self.model_path)
        if found != self.base_sha256:
            raise PersonaError(f"{where}: {self.model_path} has sha256 {found[:16]}..., but the "
                               f"adapter was trained on {self.base_sha256[:16]}...: {fix} "
                               "(or rebuild the persona on this base)")

    @classmethod
    def load(cls, folder: Path) -> Persona:
        return _load(Path(folder))


# -- loading and validation --------------------------------------------------------------

_TOP = {"name": str, "description": str, "model": str, "synthetic": str, "frame": dict,
        "generation": dict, "speech": dict, "base": str, "base_sha256": str, "adapter": str}
_FRAME = {"kind": str, "user_label": str, "character_label": str, "preamble": str,
          "system": str, "examples": list}
_GENERATION: Dict[str, Tuple[type, float, float]] = {
    "max_tokens": (int, 1, 2048),
    "temperature": (float, 0.0, 5.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 1000),
    "repeat_penalty": (float, 0.5, 3.0),
    "seed": (int, -1, 2**32 - 1),
}
SPEECH_RATE = (80, 450)  # espeak-ng's words per minute
SPEECH_PITCH = (0, 100)


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, problem: str) -> PersonaError:
        # One line, even for a quoted TOML key or value holding a newline.
        return PersonaError(f"{self.path}: {where}: {problem}".replace("\n", "\\n"))

    def table(self, data: Dict[str, Any], schema: Dict[str, type], where: str) -> None:
        for key, value in data.items():
            if key not in schema:
                known = ", ".join(schema)
                raise self.fail(f"{where}{key}", f"unknown setting (known: {known}); remove it")
            want = schema[key]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise self.fail(f"{where}{key}", f"must be a {_type_name(want)}, not {value!r}")

    def text(self, data: Dict[str, Any], key: str, where: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{where}{key}", "is required: add it as a non-empty string")
        return value


def _type_name(t: type) -> str:
    return {str: "string", int: "whole number", float: "number", dict: "table",
            list: "list"}.get(t, t.__name__)


def _load(folder: Path) -> Persona:
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise PersonaError(f"persona folder {folder} {problem}: pass a folder that holds "
                           "persona.toml and its model")
    path = folder / "persona.toml"
    if not path.is_file():
        raise PersonaError(f"{path} is missing: a persona folder needs a persona.toml "
                           "(docs/persona.toml shows every setting)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PersonaError(f"{path}: not valid TOML ({e}): fix the syntax") from e
    check = _Checker(path)
    check.table(data, _TOP, "")
    name = check.text(data, "name", "")
    frame = _frame(check, data.get("frame", {}))
    generation = _generation(check, data.get("generation", {}))
    speech = _speech(check, data.get("speech", {}))
    if "base" in data or "adapter" in data or "base_sha256" in data:
        return _base_persona(check, data, folder, name, frame, generation, speech)
    model = check.text(data, "model", "")
    model_path = Path(model) if Path(model).is_absolute() else folder / model
    synthetic = data.get("synthetic")
    if synthetic is not None:
        from appliance.engine.synth import SHAPES

        if synthetic not in SHAPES:
            raise check.fail("synthetic", f"unknown shape {synthetic!r}: use one of "
                             f"{', '.join(SHAPES)}")
    persona = Persona(name=name, folder=folder, model_path=model_path,
                      description=data.get("description", ""), synthetic=synthetic,
                      frame=frame, generation=generation, speech=speech)
    if synthetic is None or not persona.model_missing:
        _check_model(check, model_path)
    return persona


def _base_persona(check: _Checker, data: Dict[str, Any], folder: Path, name: str,
                  frame: FrameConfig, generation: Generation, speech: Speech) -> Persona:
    """base + base_sha256 + adapter, all three; the base may be absent until fetched."""
    for key in ("model", "synthetic"):
        if key in data:
            raise check.fail(key, "a persona is either a whole model (model = ...) or an "
                             "adapter on a base (base, base_sha256, adapter): remove one")
    base = check.text(data, "base", "").strip()
    digest = check.text(data, "base_sha256", "").strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise check.fail("base_sha256", f"{digest!r} is not a sha256 (64 hex digits): copy it "
                         "from `sha256sum BASE.gguf`")
    adapter = check.text(data, "adapter", "")
    if base in bases.BASES:
        model_path = bases.installed_path(base)
    elif base.endswith(".gguf"):
        model_path = Path(base) if Path(base).is_absolute() else folder / base
    else:
        raise check.fail("base", f"{base!r} is neither a known base ({', '.join(bases.BASES)}) "
                         "nor the path of a .gguf file")
    adapter_path = Path(adapter) if Path(adapter).is_absolute() else folder / adapter
    _check_model(check, adapter_path, "adapter")
    return Persona(name=name, folder=folder, model_path=model_path,
                   description=data.get("description", ""), frame=frame,
                   generation=generation, speech=speech, base=base, base_sha256=digest,
                   adapter_path=adapter_path)


def _check_model(check: _Checker, path: Path, key: str = "model") -> None:
    """Only the magic: a truncated or corrupt GGUF is the engine's to report when it loads."""
    try:
        gguf = is_gguf(path)
    except FileNotFoundError:
        raise check.fail(key, f"{key} file {path} does not exist: copy the .gguf into the "
                         "persona folder or fix the path") from None
    except OSError as e:
        raise check.fail(key, f"cannot read {path} ({e.strerror}): point {key} at a "
                         "readable .gguf file") from e
    if not gguf:
        kind = "model" if key == "model" else "adapter"
        raise check.fail(key, f"{path} is not a GGUF {kind} (it does not start with 'GGUF'): "
                         "convert it with llama.cpp or pick a .gguf file")


def _frame(check: _Checker, data: Dict[str, Any]) -> FrameConfig:
    check.table(data, _FRAME, "frame.")
    kind = data.get("kind", "dialogue")
    if kind not in ("dialogue", "chat"):
        raise check.fail("frame.kind", f"{kind!r} is not a frame kind: use 'dialogue' (base "
                         "models) or 'chat' (models with a chat template)")
    labels = {}
    for key in ("user_label", "character_label"):
        value = data.get(key, FrameConfig.__dataclass_fields__[key].default)
        if not value.strip() or "\n" in value or ":" in value:
            raise check.fail(f"frame.{key}", f"{value!r} must be one line without ':'")
        labels[key] = value.strip()
    examples = []
    for i, ex in enumerate(data.get("examples", [])):
        where = f"frame.examples[{i}]."
        if not isinstance(ex, dict):
            raise check.fail(where[:-1], "must be a table with user = ... and character = ...")
        check.table(ex, {"user": str, "character": str}, where)
        examples.append(Example(check.text(ex, "user", where), check.text(ex, "character", where)))
    return FrameConfig(kind=kind, preamble=data.get("preamble", "").strip(),
                       system=data.get("system", "").strip(), examples=tuple(examples), **labels)


def _generation(check: _Checker, data: Dict[str, Any]) -> Generation:
    values: Dict[str, Any] = {}
    for key, value in data.items():
        if key == "stop":
            if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
                raise check.fail("generation.stop", "must be a list of non-empty strings")
            values["stop"] = tuple(value)
            continue
        if key not in _GENERATION:
            known = ", ".join([*_GENERATION, "stop"])
            raise check.fail(f"generation.{key}", f"unknown setting (known: {known}); remove it")
        want, low, high = _GENERATION[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if want is int and not isinstance(value, int):
            ok = False
        if not ok or not low <= value <= high:
            raise check.fail(f"generation.{key}", f"must be a {_type_name(want)} from {low:g} "
                             f"to {high:g}, not {value!r}")
        values[key] = want(value)
    return Generation(**values)


def _speech(check: _Checker, data: Dict[str, Any]) -> Speech:
    """The optional [speech] table; whether the voice exists is the speaker's to find out."""
    check.table(data, {"voice": str, "rate": int, "pitch": int}, "speech.")
    for key, (low, high) in (("rate", SPEECH_RATE), ("pitch", SPEECH_PITCH)):
        if key in data and not low <= data[key] <= high:
            raise check.fail(f"speech.{key}", f"must be a whole number from {low} to {high}, "
                             f"not {data[key]!r}")
    voice = data.get("voice")
    if voice is not None and (not voice.strip() or len(voice.split()) != 1):
        raise check.fail("speech.voice", f"{voice!r} must be one voice name, like 'en-gb'")
    return Speech(voice=voice, rate=data.get("rate"), pitch=data.get("pitch"))


# -- prompt frames -------------------------------------------------------------------------


def _line(text: str) -> str:
    return " ".join(text.split())


class DialogueFrame:
    """A play-script document: `LABEL: text` lines, ending with the character's label.

    Token-exact: the conversation is kept as the tokens the model saw and
    sampled, turn by turn, each turn starting on a fresh line.
    """

    token_exact = True
    separator = "\n"  # ends a reply line; the stop that ends every reply

    def __init__(self, config: FrameConfig, extra_stops: Sequence[str] = ()):
        self.config = config
        self.reply_prefix = f"{config.character_label}:"
        self.stops = [self.separator, f"{config.user_label}:", *extra_stops]
        head = config.preamble + "\n\n" if config.preamble else ""
        for ex in config.examples:
            head += self._turn("user", ex.user) + self._turn("character", ex.character)
        self.head = head

    def _turn(self, role: str, text: str) -> str:
        label = self.config.user_label if role == "user" else self.config.character_label
        return f"{label}: {_line(text)}\n"

    def typing(self, partial: str) -> str:
        """The person's turn as typed so far (what prefill evaluates)."""
        return f"{self.config.user_label}: {_line(partial)}"

    def turn(self, message: str) -> str:
        """The person's finished turn, handing over to the character."""
        return self._turn("user", message) + self.reply_prefix

    def render(self, history: History, message: str) -> str:
        turns = "".join(self._turn(role, text) for role, text in history)
        return self.head + turns + self.turn(message)

    def segments(self, history: History, message: str) -> List[Tuple[str, bool]]:
        """All plain text: a dialogue document has no special tokens."""
        return [(self.render(history, message), True)]


def tokens_of(tokenize: Callable[..., List[int]], pieces: Sequence[Tuple[str, bool]]) -> List[int]:
    """Token ids of a rendered prompt, BOS first: a template's own text with its special
    tokens parsed, what was said as plain text."""
    tokens: List[int] = []
    for i, (text, content) in enumerate(pieces):
        tokens += tokenize(text, i == 0, not content)
    return tokens


_CONTENT = re.compile("\ufff9(\\d+)\ufffa")  # where a message's content goes


class ChatFrame:
    """The model's own chat template, rendered in Jinja's immutable sandbox.

    Rendered each turn as segments: the template's own text, tokenized with its
    special tokens (`<|im_start|>`), and what the person and the character said,
    tokenized as plain text, so neither can forge the other's turn. The engine's
    prefix cache keeps what did not change; a reply re-tokenised from its text
    can differ from the sampled tokens, and the cache then misses from there on
    (docs/benchmarks.md measures what that costs).
    """

    token_exact = False

    def __init__(self, config: FrameConfig, template: str, bos: str, eos: str,
                 extra_stops: Sequence[str] = (), where: str = "frame.kind"):
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.config = config
        self.where = where  # what errors name: the persona setting that chose this frame
        self.bos, self.eos = bos, eos
        self.stops = [s for s in (eos, *extra_stops) if s]
        self.reply_prefix = ""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _template_exception
        try:
            self.template = env.from_string(template)
        except TemplateError as e:
            raise PersonaError(f"{where}: the model's chat template does not compile ({e}): "
                               "use frame.kind = 'dialogue' for this model") from e

    def messages(self, history: History, message: str) -> List[Dict[str, str]]:
        msgs = [{"role": "system", "content": self.config.system}] if self.config.system else []
        for ex in self.config.examples:
            msgs += [{"role": "user", "content": ex.user},
                     {"role": "assistant", "content": ex.character}]
        for role, text in history:
            msgs.append({"role": "user" if role == "user" else "assistant", "content": text})
        msgs.append({"role": "user", "content": message})
        return msgs

    def render(self, history: History, message: str) -> str:
        return "".join(text for text, _ in self.segments(history, message))

    def segments(self, history: History, message: str) -> List[Tuple[str, bool]]:
        """The prompt as (text, is_content) pieces, in order."""
        messages = self.messages(history, message)
        marked = [dict(m, content=f"\ufff9{i}\ufffa") for i, m in enumerate(messages)]
        text = self._render(marked)
        pieces: List[Tuple[str, bool]] = []
        at = 0
        for mark in _CONTENT.finditer(text):
            if mark.start() > at:
                pieces.append((text[at : mark.start()], False))
            pieces.append((messages[int(mark.group(1))]["content"], True))
            at = mark.end()
        if at < len(text):
            pieces.append((text[at:], False))
        return pieces

    def _render(self, messages: List[Dict[str, str]]) -> str:
        from jinja2 import TemplateError
        from jinja2.exceptions import SecurityError

        try:
            text = self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=self.bos, eos_token=self.eos)
        except SecurityError as e:
            raise PersonaError(f"{self.where}: the model's chat template tried something unsafe "
                               f"({e}): this model file is not trustworthy; use another") from e
        except TemplateError as e:
            raise PersonaError(f"{self.where}: the model's chat template failed ({e}): use "
                               "frame.kind = 'dialogue' for this model") from e
        # llama.cpp adds BOS itself when tokenizing.
        return text[len(self.bos):] if self.bos and text.startswith(self.bos) else text

    def typing_segments(self, history: History, partial: str) -> List[Tuple[str, bool]]:
        """The prompt up to the end of what has been typed so far."""
        pieces = self.segments(history, partial)
        last = max((i for i, (_, content) in enumerate(pieces) if content), default=-1)
        return pieces[: last + 1]


def _template_exception(message: str) -> None:
    from jinja2 import TemplateError

    raise TemplateError(message)


def make_frame(persona: Persona, chat_template: Optional[str], bos: str, eos: str):
    """The prompt frame for a persona running on a model with this metadata."""
    config = persona.frame
    where = f"{persona.folder / 'persona.toml'}: frame.kind"
    if config.kind == "chat":
        if not chat_template:
            raise PersonaError(f"{where}: 'chat' but the model has no chat template: use "
                               "frame.kind = 'dialogue'")
        return ChatFrame(config, chat_template, bos, eos, persona.generation.stop, where)
    return DialogueFrame(config, persona.generation.stop)
