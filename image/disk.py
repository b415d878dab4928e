"""The image file's MBR partition table: read it, grow the root partition, move bytes.

Raspberry Pi OS images are MBR disks with a FAT boot partition first and the
ext4 root partition second, which runs to the end of the image. Growing means
making the file longer and moving that partition's end (sfdisk on the file).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from image.tools import ImageError, run

SECTOR = 512
FAT_TYPES = {"b", "c", "e"}  # FAT32 (CHS, LBA), FAT16 LBA
LINUX = "83"


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # sectors
    sectors: int
    type: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


def partitions(image: Path) -> List[Partition]:
    """The MBR partitions; an image without an MBR table is refused."""
    try:
        table = json.loads(run(["sfdisk", "--json", str(image)], what="reading the "
                               "partition table"))["partitiontable"]
    except (ImageError, ValueError, KeyError) as e:
        raise ImageError(f"{image}: no partition table ({e}); is this a Raspberry Pi OS "
                         ".img (or .img.xz)?") from None
    if table.get("label") != "dos":
        raise ImageError(f"{image}: a {table.get('label')} partition table, Raspberry Pi OS "
                         "images use MBR (dos): is this a Raspberry Pi OS image?")
    return [Partition(number=i + 1, start=p["start"], sectors=p["size"],
                      type=str(p["type"]).lower()) for i, p in enumerate(table["partitions"])]


def pi_layout(image: Path) -> tuple[Partition, Partition]:
    """(boot, root): a FAT partition then a Linux one, as Raspberry Pi OS lays them out."""
    parts = partitions(image)
    if len(parts) != 2 or parts[0].type not in FAT_TYPES or parts[1].type != LINUX:
        found = ", ".join(f"{p.number}: type {p.type}" for p in parts) or "none"
        raise ImageError(f"{image}: partitions ({found}) are not a Raspberry Pi OS layout "
                         "(FAT boot, then Linux root): download Raspberry Pi OS Lite (64-bit)")
    return parts[0], parts[1]


def grow_root(image: Path, root: Partition, new_size: int) -> Partition:
    """Make the image longer and the root partition end at the new end of the file."""
    end = root.offset + new_size
    with open(image, "r+b") as f:
        f.truncate(end)
    run(["sfdisk", "--no-reread", "--no-tell-kernel", "-N", str(root.number), str(image)],
        input=f"{root.start},{new_size // SECTOR}\n", what="growing the root partition")
    return next(p for p in partitions(image) if p.number == root.number)


def copy_range(source: Path, source_offset: int, target: Path, target_offset: int,
               length: int, progress: Optional[Callable[[int], None]] = None) -> None:
    """Copy bytes between files, writing only blocks that differ from what the target holds,
    so its holes stay holes: the image stays sparse and its .bmap small."""
    block = 4 << 20
    zero = bytes(block)
    fresh = not target.exists()
    with open(source, "rb") as src, open(target, "wb" if fresh else "r+b") as dst:
        src.seek(source_offset)
        done = 0
        while done < length:
            data = src.read(min(block, length - done))
            if not data:
                raise ImageError(f"{source}: ends early (truncated download?); download it "
                                 "again")
            dst.seek(target_offset + done)
            old = zero[:len(data)] if fresh else dst.read(len(data))
            if data != old:
                dst.seek(target_offset + done)
                dst.write(data)
            done += len(data)
            if progress:
                progress(len(data))
        if dst.seek(0, os.SEEK_END) < target_offset + length:
            dst.truncate(target_offset + length)
