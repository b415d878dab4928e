"""The wheels the appliance installs on first boot, offline: building them and checking them.

PyPI has no aarch64 wheel of llama-cpp-python, so `build` cross-compiles it
(Debian's g++-aarch64-linux-gnu, portable armv8-a code for Pi 4, Pi 5 and Zero 2 W)
and fetches every other dependency as a binary wheel for the Pi's platform.
`resolve` walks the dependencies from the wheels' own metadata, for the image's
Python and architecture, so a wheelhouse with a gap is refused before anything
is written.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

from image.tools import ImageError

APP = "typewriter-appliance"
ENGINE = "llama-cpp-python"
PIP = "pip"  # the installer runs pip from its wheel: the image needs no pip of its own
# The appliance's extra for the Pi (gpiozero; lgpio, its GPIO library, on aarch64), less
# systemd-python: sdist only (it would need libsystemd-dev and a compiler on the Pi), and
# the appliance speaks the notify protocol and the journal's priorities without it.
EXTRA = "pi"
LEFT_OUT = {"systemd-python"}
ARCHES = ("aarch64", "x86_64")
# glibc of the newest supported release (Trixie: 2.41): manylinux wheels up to it run
GLIBC_MINOR = 41
PROJECT = Path(__file__).resolve().parents[1]


def platforms(arch: str) -> List[str]:
    many = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    return [*many, f"manylinux2014_{arch}", f"linux_{arch}"]


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str

    def requires(self) -> List[str]:
        with zipfile.ZipFile(self.path) as z:
            info = next(n for n in z.namelist()
                        if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            message = Parser().parsestr(z.read(info).decode("utf-8"))
        return message.get_all("Requires-Dist") or []


def _tags(python: str, arch: str):
    from packaging import tags

    version = tuple(int(p) for p in python.split("."))
    interpreter = f"cp{version[0]}{version[1]}"
    return set(tags.cpython_tags(version, abis=[interpreter, "abi3", "none"],
                                 platforms=platforms(arch))) | set(
        tags.compatible_tags(version, interpreter, platforms(arch)))


def _environment(python: str, arch: str) -> Dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0",
            "platform_machine": arch, "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}


def resolve(folder: Path, python: str, arch: str) -> List[Wheel]:
    """The wheels that install the appliance and everything it needs, or ImageError."""
    from packaging.requirements import Requirement
    from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

    wanted = _tags(python, arch)
    found: Dict[str, List[tuple]] = {}
    for path in sorted(Path(folder).glob("*.whl")):
        try:
            name, version, _, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            continue
        found.setdefault(name, []).append((path, str(version), tags))
    if not found:
        raise ImageError(f"{folder}: no wheels there: build them with `typewriter image "
                         f"wheelhouse --arch {arch} --python {python} --out {folder}`")
    fix = (f"rebuild it with `typewriter image wheelhouse --arch {arch} --python {python} "
           f"--out {folder}`")
    binary = [(path, tags) for wheels in found.values() for path, _, tags in wheels
              if any(t.platform != "any" for t in tags)]
    if binary and not any(tags & wanted for _, tags in binary):
        built_for = sorted({t.platform for _, tags in binary for t in tags} |
                           {t.interpreter for _, tags in binary for t in tags})
        raise ImageError(f"{folder}: the wheelhouse is for the wrong machine: its compiled "
                         f"wheels are for {', '.join(built_for)}, the image needs Python "
                         f"{python} on {arch}: {fix}")
    env = _environment(python, arch)
    chosen: Dict[str, Wheel] = {}
    # (requirement, who needs it, the extras asked of who needs it)
    todo = [(Requirement(f"{APP}[{EXTRA}]"), "the image", {""}),
            (Requirement(PIP), "the first-boot installer", {""})]
    while todo:
        requirement, needed_by, extras = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({**env, "extra": extra})
                                          for extra in extras):
            continue
        name = canonicalize_name(requirement.name)
        if name in chosen or name in LEFT_OUT:
            continue
        candidates = found.get(name, [])
        fitting = [c for c in candidates if c[2] & wanted
                   and requirement.specifier.contains(c[1], prereleases=True)]
        if not fitting:
            if candidates and not any(c[2] & wanted for c in candidates):
                other = sorted({t.platform for c in candidates for t in c[2]} |
                               {t.interpreter for c in candidates for t in c[2]})
                raise ImageError(f"{folder}: {candidates[0][0].name} is built for "
                                 f"{', '.join(other)}, the image needs Python {python} on "
                                 f"{arch}: the wheelhouse is for the wrong machine; {fix}")
            have = ", ".join(c[0].name for c in candidates)
            raise ImageError(f"{folder}: no wheel for {requirement} (needed by {needed_by})"
                             + (f"; only {have}" if have else "") + f": {fix}")
        path, version, _ = max(fitting, key=lambda c: _version_key(c[1]))
        wheel = Wheel(path, name, version)
        chosen[name] = wheel
        todo += [(Requirement(line), f"{name} {version}", {"", *requirement.extras})
                 for line in wheel.requires()]
    return sorted(chosen.values(), key=lambda w: w.name)


def _version_key(version: str):
    from packaging.version import Version

    return Version(version)


# -- building ----------------------------------------------------------------------------


def cross_environment(arch: str) -> Dict[str, str]:
    """CMake settings that compile llama.cpp for a generic 64-bit ARM (every Pi since the 3)."""
    if arch != "aarch64":
        raise ImageError(f"cross-compiling for {arch} is not supported: build on an {arch} "
                         "machine (there it is a native build)")
    cmake = ["-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
             "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc",
             "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
             "-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a", "-DGGML_OPENMP=OFF",
             "-DLLAVA_BUILD=OFF"]  # the multimodal library: the appliance never loads it
    return {"CMAKE_ARGS": " ".join(cmake), "_PYTHON_HOST_PLATFORM": "linux-aarch64",
            "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}


def _pip(*args: str, env: Optional[Dict[str, str]] = None, what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ImageError(f"{what} failed: {' / '.join(tail)}")


def requirement_of(dist: str, name: str) -> str:
    """The pinned requirement line this installation has for `name` (one source of truth)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if canonicalize_name(req.name) == canonicalize_name(name) and not req.marker:
            return str(req)
    raise ImageError(f"{dist} does not require {name}: reinstall the project (pip install -e .)")


def pi_requirements(arch: str) -> List[str]:
    """The `pi` extra's requirements for `arch`, less what the image leaves out."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = []
    for line in metadata.requires(APP) or []:
        req = Requirement(line)
        env = {**_environment("3.11", arch), "extra": EXTRA}
        if (req.marker and req.marker.evaluate(env) and not req.marker.evaluate(
                {**env, "extra": ""}) and canonicalize_name(req.name) not in LEFT_OUT):
            wanted.append(f"{req.name}{req.specifier}")
    return wanted


def app_wheel(out: Path) -> Path:
    """The appliance's own wheel, built from a clean copy of the checkout's packages (an
    in-tree build would reuse setuptools' build/ folder, stale files included)."""
    from appliance.system.config import tomllib

    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    with tempfile.TemporaryDirectory() as source:
        for name in ("pyproject.toml", project["project"].get("readme", "README.md")):
            shutil.copy(PROJECT / name, Path(source) / name)
        for folder in PROJECT.iterdir():
            if folder.is_dir() and any(fnmatch(folder.name, p) for p in patterns):
                shutil.copytree(folder, Path(source) / folder.name,
                                ignore=shutil.ignore_patterns("__pycache__", ".*"))
        # Files installed beside the packages (the systemd units) come along too.
        for files in project["tool"]["setuptools"].get("data-files", {}).values():
            for name in files:
                (Path(source) / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(PROJECT / name, Path(source) / name)
        _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(out), source,
             what="building the appliance's wheel")
    return max(out.glob("typewriter_appliance-*.whl"), key=lambda p: p.stat().st_mtime)


def build(out: Path, arch: str, python: str, engine_wheel: Optional[Path] = None,
          log=print) -> List[Wheel]:
    """Fill `out` with every wheel the image needs for Python `python` on `arch`."""
    if engine_wheel and not engine_wheel.is_file():
        raise ImageError(f"--engine-wheel {engine_wheel}: no such file: pass a llama-cpp-python "
                         "wheel built before, or leave --engine-wheel out to build one")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"cannot make the wheelhouse {out} ({e.strerror}): pass an --out "
                         "folder you can write to") from None
    if not (PROJECT / "pyproject.toml").exists():
        raise ImageError(f"the project's source is not next to this installation ({PROJECT}): "
                         "run from a checkout")
    log("building the appliance's wheel")
    app_wheel(out)
    engine = requirement_of(APP, ENGINE)
    if engine_wheel:
        shutil.copy(engine_wheel, out / engine_wheel.name)
    elif arch == platform.machine():
        log(f"building {engine} for this machine (minutes)")
        _pip("wheel", "--no-deps", "--no-binary", ENGINE, "-w", str(out), engine,
             what=f"building {engine}")
    else:
        for tool in ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "cmake"):
            if not shutil.which(tool):
                raise ImageError(f"{tool} not found: apt-get install gcc-aarch64-linux-gnu "
                                 "g++-aarch64-linux-gnu cmake")
        log(f"cross-compiling {engine} for {arch} (minutes)")
        with tempfile.TemporaryDirectory() as scratch:
            # No cache: pip's wheel cache is keyed by the source, not the target machine.
            _pip("wheel", "--no-deps", "--no-cache-dir", "--no-binary", ENGINE, "-w", scratch,
                 engine, env=cross_environment(arch), what=f"cross-compiling {engine}")
            for built in Path(scratch).glob("*.whl"):
                shutil.move(str(built), out / built.name)
    log("fetching the other wheels for the Pi's platform")
    version = python.replace(".", "")
    targets = [f"--platform={p}" for p in platforms(arch)]
    _pip("download", "--only-binary=:all:", *targets, f"--python-version={python}",
         "--implementation=cp", f"--abi=cp{version}", "--abi=abi3", "--abi=none",
         "--find-links", str(out), "-d", str(out), f"{APP}=={metadata.version(APP)}", PIP,
         *pi_requirements(arch), what="fetching wheels")
    return resolve(out, python, arch)
