"""A persona bundle's integrity: `SHA256SUMS` over every other file in the folder.

A bundle travels (built on a workstation, pushed over SSH, shipped in the package),
so the appliance trusts no file in it until its checksum matches. The format is
`sha256sum`'s, so a maker can check a bundle by hand with `sha256sum -c`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict

from appliance.errors import UserError

SUMS = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
# A bundle is flat: plain names, no folders, nothing hidden that could shadow a file.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class BundleError(UserError):
    """A bundle whose files do not match its checksums; the message names the file and fix."""


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(folder: Path) -> None:
    """Write SHA256SUMS for every other file in the folder."""
    folder = Path(folder)
    lines = []
    for path in sorted(folder.iterdir()):
        if path.name == SUMS:
            continue
        if not path.is_file() or path.is_symlink() or not _NAME.match(path.name):
            raise BundleError(f"{path}: a bundle holds only plain files with plain names; "
                              "move it out of the folder")
        lines.append(f"{digest(path)}  {path.name}\n")
    (folder / SUMS).write_text("".join(lines), encoding="ascii")


def plain_name(name: str) -> bool:
    """A file name that stays inside the bundle folder (no paths, nothing hidden)."""
    return bool(_NAME.match(name))


def read_sums(folder: Path) -> Dict[str, str]:
    """The checksum list, every name checked to be a plain file name inside the bundle."""
    path = Path(folder) / SUMS
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing; seal the bundle (typewriter persona build "
                          "writes it) or run sha256sum * > SHA256SUMS in it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: unreadable ({e}); rebuild the bundle") from None
    return parse_sums(text, str(path))


def parse_sums(text: str, where: str = SUMS) -> Dict[str, str]:
    """name -> hex digest from SHA256SUMS text; raises BundleError naming the bad line."""
    sums: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.match(line)
        if not match:
            raise BundleError(f"{where}:{number}: not a sha256sum line; rebuild the bundle")
        hexdigest, name = match.groups()
        if not _NAME.match(name) or name == SUMS:
            raise BundleError(f"{where}:{number}: {name!r} is not a plain file name in the "
                              "bundle (paths and hidden files are refused); rebuild the bundle")
        if name in sums:
            raise BundleError(f"{where}:{number}: {name} is listed twice; rebuild the bundle")
        sums[name] = hexdigest
    if not sums:
        raise BundleError(f"{where}: lists no files; rebuild the bundle")
    return sums


def verify(folder: Path) -> None:
    """Raise BundleError unless every file is listed and matches, and nothing else is there."""
    folder = Path(folder)
    sums = read_sums(folder)
    present = {p.name for p in folder.iterdir() if p.name != SUMS}
    for name in sorted(present - set(sums)):
        raise BundleError(f"{folder / name}: not listed in {SUMS}; remove it or reseal the "
                          "bundle")
    for name, expected in sums.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{path}: listed in {SUMS} but missing; copy the whole bundle "
                              "again")
        if digest(path) != expected:
            raise BundleError(f"{path}: checksum does not match {SUMS} (corrupted or "
                              "changed); copy the bundle again or rebuild it")
