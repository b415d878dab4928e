"""What the base image is: Raspberry Pi OS, which release, 64-bit, which Python.

The release decides how first boot is configured (custom.toml before Trixie,
cloud-init from Trixie on) and the Python version the wheels must be built for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from image.rootfs import RootFS
from image.tools import ImageError

# Debian codename -> the Python 3 it ships
RELEASES = {"bookworm": "3.11", "trixie": "3.13"}


@dataclass(frozen=True)
class Target:
    codename: str
    python: str  # "3.11"
    pretty: str

    @property
    def cloud_init(self) -> bool:
        return self.codename != "bookworm"


def os_release(text: str) -> dict:
    fields = {}
    for line in text.splitlines():
        match = re.match(r'^([A-Z_]+)=("?)(.*)\2$', line.strip())
        if match:
            fields[match.group(1)] = match.group(3)
    return fields


def inspect(root: RootFS, image: Path) -> Target:
    """The release of a Raspberry Pi OS Lite arm64 root file system; anything else refused."""
    text = root.read("/etc/os-release")
    if text is None or not root.exists("/etc/rpi-issue"):
        raise ImageError(f"{image}: the root file system is not Raspberry Pi OS (no "
                         "/etc/os-release or /etc/rpi-issue): download Raspberry Pi OS Lite "
                         "(64-bit) from raspberrypi.com/software")
    fields = os_release(text)
    codename = fields.get("VERSION_CODENAME", "")
    pretty = fields.get("PRETTY_NAME", codename or "an unnamed release")
    if codename not in RELEASES:
        known = ", ".join(RELEASES)
        named = pretty if codename and codename in pretty else f"{pretty} ({codename or '?'})"
        raise ImageError(f"{image}: {named} is a release this "
                         f"builder does not know how to configure (known: {known}): use a "
                         "Raspberry Pi OS Lite image based on one of them")
    if not root.exists("/usr/lib/aarch64-linux-gnu"):
        raise ImageError(f"{image}: {pretty} is not a 64-bit (arm64) image: download "
                         "Raspberry Pi OS Lite (64-bit)")
    return Target(codename=codename, python=RELEASES[codename], pretty=pretty)
