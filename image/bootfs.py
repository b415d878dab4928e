"""The FAT boot partition, read and written in place with mtools (`image@@offset`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List

from image.disk import Partition
from image.tools import ImageError, run


class BootFS:
    def __init__(self, image: Path, partition: Partition):
        self.drive = f"{image}@@{partition.offset}"

    def read(self, name: str) -> str:
        return run(["mtype", "-i", self.drive, f"::/{name}"], what=f"reading {name} from the "
                   "boot partition")

    def names(self) -> List[str]:
        listing = run(["mdir", "-b", "-i", self.drive, "::/"], what="listing the boot partition")
        return [line.strip().removeprefix("::/") for line in listing.splitlines() if line.strip()]

    def write(self, name: str, text: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
            f.write(text)
            f.flush()
            run(["mcopy", "-o", "-i", self.drive, f.name, f"::/{name}"],
                what=f"writing {name} to the boot partition")


def require(boot: BootFS, image: Path) -> None:
    """A Raspberry Pi boot partition has config.txt and cmdline.txt."""
    try:
        names = {n.lower() for n in boot.names()}
    except ImageError:
        raise ImageError(f"{image}: the first partition is not a readable FAT file system: "
                         "is this a Raspberry Pi OS image?") from None
    missing = [n for n in ("config.txt", "cmdline.txt") if n not in names]
    if missing:
        raise ImageError(f"{image}: the boot partition has no {' or '.join(missing)}: this is "
                         "not a Raspberry Pi OS image (download Raspberry Pi OS Lite 64-bit)")
