"""The Debian packages the image installs on first boot, offline: espeak-ng, alsa-utils, bwrap.

At build time a private apt (its own lists, cache and sources, the base image's own
dpkg status, architecture arm64; nothing of this machine's apt state is changed)
works out which packages the base lacks, fetches their .deb files with
`apt-get download` and checks each against the SHA-256 in the archive's Packages
index (itself checked by apt against the signed Release file). The image carries
them in /opt/typewriter/debs with a SHA256SUMS; the first-boot installer checks the
sums and installs them with dpkg.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from appliance.persona.bundle import digest
from image.tools import ImageError

# The README's promises: speech (espeak-ng renders, aplay plays), and uploads validated in a
# sandbox (bubblewrap: persona/sandbox.py; on Bookworm arm64 one 50 kB .deb, no new dependency).
PACKAGES = ("espeak-ng", "alsa-utils", "bubblewrap")
ARCH = "arm64"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"
_URI = re.compile(r"^'(?P<uri>[^']+)' (?P<file>\S+) (?P<size>\d+) ")


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    file: str  # the archive's file name (name_version_arch.deb)
    size: int
    sha256: str
    path: Optional[Path] = None


def mirror() -> str:
    return os.environ.get("TYPEWRITER_DEBIAN_MIRROR", MIRROR)


class PrivateApt:
    """apt-get and apt-cache with their own state under `root`, for arm64 and one release."""

    def __init__(self, root: Path, release: str, status: str):
        self.root = root
        for folder in ("state/lists/partial", "cache/archives/partial", "parts", "prefs"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        (root / "sources.list").write_text(
            f"deb [arch={ARCH} signed-by={KEYRING}] {mirror()} {release} main\n")
        (root / "status").write_text(status)
        self.options = []
        for key, value in (("Dir::State", root / "state"), ("Dir::State::status",
                                                             root / "status"),
                           ("Dir::Cache", root / "cache"), ("Dir::Etc::sourcelist",
                                                             root / "sources.list"),
                           ("Dir::Etc::sourceparts", root / "parts"),
                           ("Dir::Etc::preferencesparts", root / "prefs"),
                           ("APT::Architecture", ARCH), ("APT::Architectures", ARCH),
                           ("Debug::NoLocking", "1"), ("Acquire::Languages", "none"),
                           ("APT::Get::AllowUnauthenticated", "false"),
                           ("APT::Install-Recommends", "false")):  # as Raspberry Pi OS Lite
            self.options += ["-o", f"{key}={value}"]
        if os.geteuid() == 0:  # the _apt user could not write into a root-owned cache
            self.options += ["-o", "APT::Sandbox::User=root"]

    def run(self, tool: str, *args: str, cwd: Optional[Path] = None, what: str) -> str:
        if not shutil.which(tool):
            raise ImageError(f"{tool} not found: the image's system packages are fetched with "
                             "apt (a Debian or Ubuntu machine), or build with "
                             "--no-system-packages")
        done = subprocess.run([tool, *self.options, *args], capture_output=True, text=True,
                              cwd=cwd, env=dict(os.environ, LC_ALL="C"))
        if done.returncode != 0:
            detail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            raise ImageError(f"{what} failed: {detail[-1] if detail else done.returncode} "
                             f"(mirror {mirror()}; set TYPEWRITER_DEBIAN_MIRROR, or build "
                             "with --no-system-packages)")
        return done.stdout


def needed(apt: PrivateApt, packages=PACKAGES) -> List[Deb]:
    """The packages (with dependencies) the base's dpkg status lacks, as the index has them."""
    apt.run("apt-get", "-q", "update", what="reading the Debian archive's index (apt-get update)")
    listing = apt.run("apt-get", "--print-uris", "-qq", "-y", "install", *packages,
                      what=f"working out what {' and '.join(packages)} need")
    files = [m.group("file") for m in map(_URI.match, listing.splitlines()) if m]
    if not files:
        return []
    wanted = [f"{name}:{ARCH}={version}" for name, version, _ in
              (file[:-len(".deb")].split("_") for file in files)]
    # apt-get's URI lines name the file; apt-cache reads the index stanza and its SHA-256.
    stanzas = apt.run("apt-cache", "show", "--no-all-versions", *_unquote(wanted),
                      what="reading the packages' SHA-256 from the index")
    index = parse_index(stanzas)
    debs = []
    for file in files:
        name, version = file.split("_")[:2]
        key = (name, _unquote([version])[0])
        if key not in index:
            raise ImageError(f"{file}: not in the archive's Packages index: try again later")
        debs.append(index[key])
    return debs


def _unquote(items: List[str]) -> List[str]:
    # apt-get's file names carry the version with its epoch colon written as %3a
    return [item.replace("%3a", ":") for item in items]


def parse_index(text: str) -> Dict[tuple, Deb]:
    """(package, version) -> Deb, from Packages-index stanzas."""
    found = {}
    for stanza in text.strip().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if {"Package", "Version", "Filename", "SHA256", "Size"} <= set(fields):
            found[(fields["Package"], fields["Version"])] = Deb(
                fields["Package"], fields["Version"], fields["Filename"].rsplit("/", 1)[-1],
                int(fields["Size"]), fields["SHA256"])
    return found


def check(deb: Deb, path: Path) -> Deb:
    """The file is the one the index names (size and SHA-256), or ImageError."""
    if not path.is_file() or path.stat().st_size != deb.size or digest(path) != deb.sha256:
        path.unlink(missing_ok=True)
        raise ImageError(f"{deb.file}: its SHA-256 is not the one in the archive's Packages "
                         "index (a damaged download or a tampered mirror): build again")
    return Deb(deb.name, deb.version, deb.file, deb.size, deb.sha256, path)


def fetch(status: str, release: str, cache: Path, log: Callable[[str], None] = print,
          packages=PACKAGES) -> List[Deb]:
    """The checked .deb files the base needs for `packages`, fetched into `cache` once."""
    apt = PrivateApt(cache / f"apt-{release}-{ARCH}", release, status)
    debs = needed(apt, packages)
    store = cache / f"debs-{release}-{ARCH}"
    store.mkdir(parents=True, exist_ok=True)
    missing = [d for d in debs if not (store / d.file).is_file()]
    if missing:
        log(f"fetching {len(missing)} Debian packages for {' and '.join(packages)} "
            f"({sum(d.size for d in missing) / 1e6:.1f} MB)")
        apt.run("apt-get", "-q", "download", *[f"{d.name}:{ARCH}={d.version}" for d in missing],
                cwd=store, what="downloading the Debian packages")
        for deb in missing:
            _name_as_index(store, deb)
    checked = []
    for deb in debs:
        try:
            checked.append(check(deb, store / deb.file))
        except ImageError:
            log(f"{deb.file}: wrong SHA-256, fetching it again")
            apt.run("apt-get", "-q", "download", f"{deb.name}:{ARCH}={deb.version}",
                    cwd=store, what="downloading the Debian packages")
            _name_as_index(store, deb)
            checked.append(check(deb, store / deb.file))
    return checked


def _name_as_index(store: Path, deb: Deb) -> None:
    """apt-get download writes name_[epoch%3a]version_arch.deb; keep the index's name."""
    stem = f"{deb.name}_{deb.version.replace(':', '%3a')}_"
    for got in store.glob(f"{glob_escape(stem)}*.deb"):
        if got.name != deb.file:
            got.replace(store / deb.file)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def sums(debs: List[Deb]) -> str:
    """SHA256SUMS for the image's debs folder (`sha256sum -c` reads it)."""
    return "".join(f"{d.sha256}  {d.file}\n" for d in debs)
