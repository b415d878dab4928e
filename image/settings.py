"""What the maker asks for: command-line options, or the same keys in a TOML file."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional

from appliance.system.config import tomllib
from image.tools import ImageError
from image.uart import BOARDS

_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_KEY = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$")


@dataclass
class Settings:
    base: Path
    out: Path
    ssh_key: str
    persona: Path
    persona_key: Optional[str] = None
    hostname: str = "typewriter"
    user: str = "admin"
    board: str = "pi4"
    wheelhouse: Optional[Path] = None
    no_wheels: bool = False
    system_packages: bool = True  # espeak-ng and alsa-utils, fetched for the image
    dry_run: bool = False


def public_key(given: str, option: str) -> str:
    """A public key from a file (or the key itself); a private key or junk is refused."""
    path = Path(given).expanduser()
    if path.is_file():
        text = path.read_text(errors="replace").strip()
    elif _KEY.match(given.strip()):
        text = given.strip()
    else:
        raise ImageError(f"{option} {given}: no such file: make a key with ssh-keygen -t "
                         "ed25519 and pass its .pub file")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or not _KEY.match(lines[0]):
        raise ImageError(f"{option} {given}: not an SSH public key (one line like "
                         "'ssh-ed25519 AAAA... you@host'): pass the .pub file, never the "
                         "private key")
    return lines[0]


def load(options: Dict[str, Any], config: Optional[Path], default_persona: Path) -> Settings:
    """Settings from the TOML file (if any) overridden by the options given."""
    values: Dict[str, Any] = {}
    if config:
        try:
            values = tomllib.loads(config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ImageError(f"{config}: {e}: fix the file") from None
        known = {f.name.replace("_", "-") for f in fields(Settings)} - {"dry-run"}
        values = {k.replace("_", "-"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ImageError(f"{config}: unknown setting {', '.join(unknown)} (known: "
                             f"{', '.join(sorted(known))})")
        values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in options.items() if v not in (None, False)})
    for required in ("base", "out", "ssh_key"):
        if not values.get(required):
            raise ImageError(f"--{required.replace('_', '-')} is required (on the command line "
                             "or in the --config file)")
    if values.get("no_wheels") and values.get("wheelhouse"):
        raise ImageError("--wheelhouse and --no-wheels contradict each other: pass one")
    if not values.get("no_wheels") and not values.get("wheelhouse"):
        raise ImageError("--wheelhouse DIR is required (make one with `typewriter image "
                         "wheelhouse --arch aarch64 --out DIR`), or --no-wheels for a "
                         "layout-only test image")
    if "board" in values and values["board"] not in BOARDS:
        raise ImageError(f"--board {values['board']!r}: choose one of {', '.join(BOARDS)}")
    settings = Settings(
        base=Path(values["base"]).expanduser(), out=Path(values["out"]).expanduser(),
        ssh_key=public_key(str(values["ssh_key"]), "--ssh-key"),
        persona=Path(values.get("persona") or default_persona).expanduser(),
        persona_key=(public_key(str(values["persona_key"]), "--persona-key")
                     if values.get("persona_key") else None),
        hostname=values.get("hostname", "typewriter"), user=values.get("user", "admin"),
        board=values.get("board", "pi4"),
        wheelhouse=Path(values["wheelhouse"]).expanduser() if values.get("wheelhouse") else None,
        no_wheels=bool(values.get("no_wheels")), dry_run=bool(values.get("dry_run")),
        system_packages=not values.get("no_system_packages")
        and values.get("system_packages", True) is not False)
    if not _HOSTNAME.match(settings.hostname):
        raise ImageError(f"--hostname {settings.hostname!r}: use lower-case letters, digits "
                         "and '-' (up to 63)")
    if not _USER.match(settings.user) or settings.user in ("root", "typewriter"):
        raise ImageError(f"--user {settings.user!r}: use a new lower-case login name (not root "
                         "or typewriter)")
    if not settings.base.is_file():
        raise ImageError(f"--base {settings.base}: no such file: download Raspberry Pi OS Lite "
                         "(64-bit) (.img.xz) and pass its path")
    if settings.out.resolve() == settings.base.resolve():
        raise ImageError("--out is the base image: write the appliance image to a new file")
    if not settings.out.parent.is_dir():
        raise ImageError(f"--out {settings.out}: folder {settings.out.parent} does not exist")
    return settings
