"""The appliance's configuration file (`/etc/typewriter/config.toml`).

Every setting has a default, so the file is optional; a setting given on the
command line wins over the file. Problems are reported all at once, one line
each, naming the setting and the fix, before anything starts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from appliance.errors import UserError
from appliance.persona.spec import SPEECH_PITCH, SPEECH_RATE
from appliance.system.paths import xdg

SYSTEM_CONFIG = Path("/etc/typewriter/config.toml")
EXAMPLE = """\
# /etc/typewriter/config.toml: every setting is optional.
port = "/dev/typewriter"      # the typewriter's serial device
# persona = "juliet"          # an installed persona's name or a persona folder
                              # (default: the active installed one, else the shipped one)
personas = "/var/lib/typewriter/personas"   # where `persona push` installs personas
width = 65                    # carriage width in characters
submit = "double-return"      # or "submit-key": only the send key sends
prefill = true                # evaluate the prompt while the person types
threads = 4                   # llama.cpp threads (default: physical cores)
context = 2048                # context size in tokens
kv = "q8_0"                   # KV cache: "q8_0" (half the memory) or "f16"
mmap = "auto"                 # map the model file: "auto", "on", "off"
output = "print"              # "print", "speech" (no print mechanism) or "both"
# voice = "en-gb"             # espeak-ng voice (`espeak-ng --voices`); a persona's
# speech_rate = 175           # [speech] table wins; rate in words per minute,
# speech_pitch = 50           # pitch 0..100
# piper_model = "/var/lib/typewriter/voices/en_GB-alan-medium.onnx"  # with piper-tts
# speech_files = "/var/lib/typewriter/speech"  # keep speech as numbered WAVs, not played
# panel_thinking = 18         # the panel's GPIO (BCM) pins; leave out what is not fitted
# panel_ready = 23
# panel_button = 24           # press: new conversation; hold: next persona
# panel_buzzer = 25           # beeps when the typewriter stops answering
"""


class ConfigError(UserError):
    """The configuration cannot be used; one line per problem."""


@dataclass
class Config:
    port: Optional[str] = None
    persona: Optional[str] = None
    personas: Optional[str] = None
    width: int = 65
    submit: str = "double-return"
    prefill: bool = True
    threads: Optional[int] = None
    context: int = 2048
    kv: str = "q8_0"
    mmap: str = "auto"
    output: str = "print"
    voice: Optional[str] = None
    speech_rate: Optional[int] = None
    speech_pitch: Optional[int] = None
    piper_model: Optional[str] = None
    speech_files: Optional[str] = None
    panel_thinking: Optional[int] = None
    panel_ready: Optional[int] = None
    panel_button: Optional[int] = None
    panel_buzzer: Optional[int] = None


# name: (type, allowed values or (low, high) range or None)
_RULES: Dict[str, Tuple[type, Any]] = {
    "port": (str, None),
    "persona": (str, None),
    "personas": (str, None),
    "width": (int, (20, 250)),
    "submit": (str, ("double-return", "submit-key")),
    "prefill": (bool, None),
    "threads": (int, (1, 256)),
    "context": (int, (256, 131072)),
    "kv": (str, ("q8_0", "f16")),
    "mmap": (str, ("auto", "on", "off")),
    "output": (str, ("print", "speech", "both")),
    "voice": (str, None),
    "speech_rate": (int, SPEECH_RATE),
    "speech_pitch": (int, SPEECH_PITCH),
    "piper_model": (str, None),
    "speech_files": (str, None),
    **{f"panel_{part}": (int, (0, 27)) for part in ("thinking", "ready", "button", "buzzer")},
}


def default_path() -> Optional[Path]:
    """The system file, else the user's ($XDG_CONFIG_HOME/typewriter/config.toml), if present."""
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    user = xdg("XDG_CONFIG_HOME") / "config.toml"
    return user if user.exists() else None


def load(path: Optional[Path]) -> Config:
    """Read and check a config file; None gives the defaults."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: create it (see `typewriter config "
                          "example`) or leave out --config") from None
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {path} ({why}): pass a TOML file (see `typewriter "
                          "config example`)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}): fix the syntax") from None
    problems: List[str] = []
    values: Dict[str, Any] = {}
    for key, value in data.items():
        if key not in _RULES:
            problems.append(f"{path}: {key}: unknown setting (known: {', '.join(_RULES)}); "
                            "remove it")
            continue
        kind, allowed = _RULES[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{path}: {key}: must be a {kind.__name__}, not {value!r}")
        elif isinstance(allowed, tuple) and kind is int and not allowed[0] <= value <= allowed[1]:
            problems.append(f"{path}: {key}: {value} is outside {allowed[0]}..{allowed[1]}")
        elif isinstance(allowed, tuple) and kind is str and value not in allowed:
            problems.append(f"{path}: {key}: {value!r} is not one of {', '.join(allowed)}")
        else:
            values[key] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(**values)


def merge(config: Config, overrides: Dict[str, Any]) -> Config:
    """The file's settings with those given on the command line (not None) on top."""
    names = {f.name for f in fields(Config)}
    given = {k: v for k, v in overrides.items() if k in names and v is not None}
    return Config(**{**config.__dict__, **given})
