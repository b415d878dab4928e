"""`typewriter image build`: a stock Raspberry Pi OS Lite image in, the appliance image out.

The base is staged into a temporary file next to --out, changed there, and renamed
to --out only when everything worked, so a failed build leaves nothing at --out.
Every change is first collected in a `Plan`, which `--dry-run` prints instead of
applying.
"""

from __future__ import annotations

import errno
import hashlib
import lzma
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from appliance.engine import bases
from appliance.errors import UserError
from appliance.persona.bundle import BundleError, verify
from appliance.persona.spec import Persona
from appliance.persona.store import STATE, StoreError, check_name
from appliance.system.config import EXAMPLE as CONFIG_EXAMPLE
from appliance.system.paths import cache_dir
from appliance.system.units import ENABLE_LINK, PLACES, SOURCE
from image import debs, installer, uart
from image.bootfs import BootFS, require
from image.disk import copy_range, grow_root, pi_layout
from image.firstboot import boot_files
from image.rootfs import RootFS
from image.settings import Settings
from image.target import Target, inspect
from image.tools import ImageError, need
from image.wheelhouse import Wheel, resolve

MiB = 1 << 20
PERSONAS = "/var/lib/typewriter/personas"
ARCH = "aarch64"
# What a venv unpacks to, per byte of wheel (compressed code and libraries)
UNPACKED = 3
MARGIN = 64 * MiB


@dataclass
class Plan:
    """Every change the build makes, described for people and replayed on the image."""

    root_dirs: List[Tuple[str, int]] = field(default_factory=list)
    root_files: List[Tuple[str, Path, int]] = field(default_factory=list)
    root_texts: List[Tuple[str, bytes, int]] = field(default_factory=list)
    root_links: List[Tuple[str, str]] = field(default_factory=list)
    boot: Dict[str, str] = field(default_factory=dict)
    lines: List[str] = field(default_factory=list)

    def dir(self, path: str, mode: int = 0o755) -> None:
        self.root_dirs.append((path, mode))
        self.lines.append(f"rootfs  mkdir   {path} ({mode:04o} root:root)")

    def file(self, path: str, source: Path, mode: int = 0o644) -> None:
        self.root_files.append((path, source, mode))
        self.lines.append(f"rootfs  write   {path} ({mode:04o} root:root, "
                          f"{source.stat().st_size:,} bytes from {source})")

    def text(self, path: str, text: str, mode: int = 0o644, why: str = "") -> None:
        self.root_texts.append((path, text.encode(), mode))
        note = f", {why}" if why else ""
        self.lines.append(f"rootfs  write   {path} ({mode:04o} root:root{note})")

    def link(self, path: str, target: str) -> None:
        self.root_links.append((path, target))
        self.lines.append(f"rootfs  symlink {path} -> {target}")

    def boot_file(self, name: str, text: str, why: str) -> None:
        self.boot[name] = text
        self.lines.append(f"bootfs  write   /{name} ({why})")

    @property
    def payload(self) -> int:
        return (sum(s.stat().st_size for _, s, _ in self.root_files)
                + sum(len(t) for _, t, _ in self.root_texts))

    def apply(self, root: RootFS, boot: BootFS) -> None:
        for path, mode in self.root_dirs:
            root.mkdir(path, mode)
        for path, source, mode in self.root_files:
            root.copy(source, path, mode)
        for path, data, mode in self.root_texts:
            root.write(path, data, mode)
        for path, target in self.root_links:
            root.symlink(path, target)
        root.apply()
        for name, text in self.boot.items():
            boot.write(name, text)


@dataclass
class Result:
    out: Path
    target: Target
    plan: Plan
    wheels: List[Wheel]
    grown: int = 0
    packages: List[debs.Deb] = field(default_factory=list)
    sha256: str = ""
    bmap: Optional[Path] = None


def persona_bundle(folder: Path) -> Tuple[str, List[Path]]:
    """(store name, files) of a sealed persona bundle; anything else refused."""
    if not (folder / "persona.toml").is_file():
        raise ImageError(f"--persona {folder}: no persona.toml there: pass a persona bundle "
                         "folder (typewriter persona build makes one)")
    try:
        verify(folder)
        name = check_name(folder.name.lower())
    except (BundleError, StoreError) as e:
        raise ImageError(f"--persona {folder}: {e}") from None
    return name, sorted(p for p in folder.iterdir() if p.is_file())


def persona_base(folder: Path) -> Optional[Path]:
    """The base model file an adapter persona needs on the Pi (None for a whole model): a
    known base, fetched here and the very file the adapter was trained on."""
    try:
        persona = Persona.load(folder)
        if persona.base is None:
            return None
        if persona.base not in bases.BASES:
            raise ImageError(f"--persona {folder}: its base is the file {persona.base}, which "
                             "the Pi would not have: build it on a known base "
                             f"({', '.join(bases.BASES)}), or with --merge for one whole model")
        persona.check_base()
    except ImageError:
        raise
    except UserError as e:
        raise ImageError(f"--persona {folder}: {e}") from None
    return persona.model_path


def plan_changes(settings: Settings, target: Target, boot: BootFS,
                 wheels: List[Wheel], packages: Optional[List[debs.Deb]] = None) -> Plan:
    plan = Plan()
    for name, place in PLACES.items():
        plan.file(f"/{place}", SOURCE / name)
    plan.link(f"/{ENABLE_LINK}", f"/{PLACES['typewriter.service']}")
    plan.dir("/etc/typewriter")
    plan.text("/etc/typewriter/config.toml", CONFIG_EXAMPLE, why="the appliance's settings")
    if settings.persona_key:
        plan.text(installer.PERSONA_KEY, settings.persona_key + "\n",
                  why="persona upload key, authorized on first boot")
    name, files = persona_bundle(settings.persona)
    plan.dir("/var/lib/typewriter", 0o750)
    plan.dir(PERSONAS, 0o750)
    plan.dir(f"{PERSONAS}/{name}", 0o750)
    for source in files:
        plan.file(f"{PERSONAS}/{name}/{source.name}", source)
    plan.text(f"{PERSONAS}/{STATE}", f'{{"active": "{name}", "previous": null}}\n',
              why=f"persona {name!r} active")
    base = persona_base(settings.persona)
    if base is not None:
        plan.dir(str(bases.SYSTEM_MODELS.parent))
        plan.dir(str(bases.SYSTEM_MODELS))
        plan.file(str(bases.SYSTEM_MODELS / base.name), base)
    plan.dir(installer.WHEELS)
    for wheel in wheels:
        plan.file(f"{installer.WHEELS}/{wheel.path.name}", wheel.path)
    if packages:
        plan.dir(installer.DEBS)
        for deb in packages:
            plan.file(f"{installer.DEBS}/{deb.file}", deb.path)
        plan.text(f"{installer.DEBS}/SHA256SUMS", debs.sums(packages),
                  why=f"{len(packages)} Debian packages for {' and '.join(debs.PACKAGES)}, "
                  "SHA-256 from the archive's index")
    plan.text(installer.SCRIPT_PATH, installer.SCRIPT_TEXT, 0o755, why="first-boot installer")
    plan.text(installer.UNIT_PATH, installer.UNIT_TEXT, why="first-boot installer unit")
    plan.link(installer.UNIT_LINK, installer.UNIT_PATH)

    config = uart.config_txt(boot.read("config.txt"), settings.board)
    if config != boot.read("config.txt"):
        plan.boot_file("config.txt", config, " ".join(uart.config_lines(settings.board)))
    cmdline = uart.cmdline_txt(boot.read("cmdline.txt"))
    if cmdline.split() != boot.read("cmdline.txt").split():
        plan.boot_file("cmdline.txt", cmdline, "serial console removed")
    if target.codename == "bookworm":
        need("openssl")
    for file, text in boot_files(target, settings.hostname, settings.user,
                                 settings.ssh_key).items():
        plan.boot_file(file, text, f"first boot: user {settings.user} with your key, "
                       f"no password login, hostname {settings.hostname}, SSH on")
    return plan


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal, nothing otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def unpacked_size(base: Path) -> int:
    if base.suffix != ".xz":
        return base.stat().st_size
    need("xz")
    listing = subprocess.run(["xz", "--robot", "--list", str(base)], capture_output=True,
                             text=True)
    for line in listing.stdout.splitlines():
        parts = line.split("\t")
        if parts[0] == "totals" and len(parts) > 4:
            return int(parts[4])
    raise ImageError(f"--base {base}: not a readable .xz file: download it again")


def stage(base: Path, staged: Path) -> None:
    """The base image, uncompressed, as a sparse file."""
    if base.suffix != ".xz":
        copy_range_with_bar(base, staged, base.stat().st_size)
        return
    block, zero = 4 * MiB, bytes(4 * MiB)
    try:
        with open(base, "rb") as raw, lzma.open(raw) as src, open(staged, "wb") as dst, \
                progress("unpacking the base image", base.stat().st_size) as advance:
            seen = 0
            for data in iter(lambda: src.read(block), b""):
                if data == zero[:len(data)]:
                    dst.seek(len(data), os.SEEK_CUR)
                else:
                    dst.write(data)
                advance(raw.tell() - seen)
                seen = raw.tell()
            dst.truncate()
    except lzma.LZMAError as e:
        raise ImageError(f"--base {base}: {e}: the download is damaged, download it again") \
            from None


def copy_range_with_bar(source: Path, target: Path, length: int, source_offset: int = 0,
                        target_offset: int = 0, what: str = "copying the base image") -> None:
    with progress(what, length) as advance:
        copy_range(source, source_offset, target, target_offset, length, advance)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, progress("SHA-256", path.stat().st_size) as advance:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
            advance(len(block))
    return h.hexdigest()


def check_space(settings: Settings, wheels: List[Wheel]) -> None:
    """Refuse before staging when --out's disk cannot hold the work."""
    payload = sum(w.path.stat().st_size for w in wheels) * (1 + UNPACKED)
    payload += sum(p.stat().st_size for p in settings.persona.iterdir() if p.is_file())
    base = persona_base(settings.persona)
    payload += base.stat().st_size if base is not None else 0
    needed = 2 * unpacked_size(settings.base) + payload + MARGIN
    free = shutil.disk_usage(settings.out.parent).free
    if free < needed:
        raise ImageError(f"too little disk space in {settings.out.parent}: the build needs "
                         f"{needed // MiB:,} MiB, {free // MiB:,} MiB are free: free some, or "
                         "pass --out on a bigger disk")


def build(settings: Settings, log: Callable[[str], None] = print) -> Result:
    need("sfdisk", "mtype", "mcopy", "mdir", "debugfs", "e2fsck", "resize2fs", "dumpe2fs")
    persona_bundle(settings.persona)
    persona_base(settings.persona)
    wheels_folder = settings.wheelhouse
    if wheels_folder is not None and not wheels_folder.is_dir():
        raise ImageError(f"--wheelhouse {wheels_folder}: no such folder: make it with "
                         f"`typewriter image wheelhouse --arch {ARCH} --out {wheels_folder}`")
    out = settings.out
    staged = out.with_name(f".{out.name}.partial-{os.getpid()}")
    rootfile = staged.with_name(staged.name + ".rootfs")
    sidecars = {".sha256": staged.with_name(staged.name + ".sha256"),
                ".bmap": staged.with_name(staged.name + ".bmap")}
    temporary = [staged, rootfile, *sidecars.values()]
    try:
        # A quick estimate before the long copy; wheels are checked once the release is known.
        check_space(settings, [])
        log(f"staging {settings.base}")
        stage(settings.base, staged)
        boot_part, root_part = pi_layout(staged)
        boot = BootFS(staged, boot_part)
        require(boot, settings.base)
        copy_range_with_bar(staged, rootfile, root_part.size, root_part.offset, 0,
                            "reading the root partition")
        root = RootFS(rootfile)
        target = inspect(root, settings.base)
        log(f"base: {target.pretty}")
        wheels = [] if settings.no_wheels else resolve(wheels_folder, target.python, ARCH)
        check_space(settings, wheels)
        packages = []
        if wheels and settings.system_packages:
            packages = debs.fetch(root.read("/var/lib/dpkg/status") or "", target.codename,
                                  cache_dir() / "image", log)
        plan = plan_changes(settings, target, boot, wheels, packages)
        result = Result(out, target, plan, wheels, packages=packages)
        size, free = root.space()
        wanted = plan.payload + UNPACKED * sum(w.path.stat().st_size for w in wheels) + MARGIN
        if free < wanted:
            result.grown = -(-(wanted - free) // (4 * MiB)) * 4 * MiB
            plan.lines.append(f"disk    grow    root partition and file system by "
                              f"{result.grown // MiB} MiB (to {(size + result.grown) // MiB} MiB)")
        if settings.dry_run:
            return result
        if result.grown:
            root_part = grow_root(staged, root_part, root_part.size + result.grown)
            with open(rootfile, "r+b") as f:
                f.truncate(root_part.size)
            root.resize(root_part.size)
        log("writing the root file system")
        plan.apply(root, boot)
        root.check()
        copy_range_with_bar(rootfile, staged, root_part.size, 0, root_part.offset,
                            "writing the root partition")
        result.sha256 = sha256(staged)
        sidecars[".sha256"].write_text(f"{result.sha256}  {out.name}\n")
        if shutil.which("bmaptool"):
            made = subprocess.run(["bmaptool", "create", "-o", str(sidecars[".bmap"]),
                                   str(staged)], capture_output=True, text=True)
            if made.returncode != 0:
                log(f"no .bmap: bmaptool failed ({made.stderr.strip()})")
                sidecars.pop(".bmap")
        else:
            sidecars.pop(".bmap")
        os.replace(staged, out)
        for suffix, path in sidecars.items():
            os.replace(path, out.with_name(out.name + suffix))
        result.bmap = out.with_name(out.name + ".bmap") if ".bmap" in sidecars else None
        return result
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ImageError(f"the disk under {out.parent} filled up: free some space or pass "
                             "--out on a bigger disk") from None
        raise ImageError(f"{e.filename or out}: {e.strerror}") from None
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)


def summary(settings: Settings, result: Result) -> str:
    lines = [f"{'Planned' if settings.dry_run else 'Built'} {result.out} from "
             f"{result.target.pretty}:",
             f"  board {settings.board}, serial link on the GPIO UART, hostname "
             f"{settings.hostname}, admin user {settings.user} (key only)",
             f"  persona {settings.persona.name}, "
             + (f"{len(result.wheels)} wheels for Python {result.target.python} on {ARCH}"
                if result.wheels else "LAYOUT ONLY (--no-wheels): the appliance is not "
                "installed on first boot; for tests, not for a typewriter"),
             (f"  {len(result.packages)} Debian packages for {' and '.join(debs.PACKAGES)} "
              "(installed on first boot with dpkg)" if result.packages else
              f"  {' and '.join(debs.PACKAGES)}: the base has them"
              if result.wheels and settings.system_packages else
              f"  NO {' or '.join(debs.PACKAGES)} (--no-system-packages): no speech"
              if result.wheels else ""),
             f"  {len(result.plan.lines)} changes:"]
    lines = [line for line in lines if line]
    lines += [f"    {line}" for line in result.plan.lines]
    if not settings.dry_run:
        lines.append(f"  SHA-256 {result.sha256}")
        lines.append(f"  flash: bmaptool copy {result.out} /dev/sdX" if result.bmap else
                     f"  flash: dd if={result.out} of=/dev/sdX bs=4M conv=fsync")
    return "\n".join(lines)


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr)
