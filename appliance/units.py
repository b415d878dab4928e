"""`typewriter install-units`: put the unit, udev rule, user and config in place.

The files live in the project's `systemd/` folder; `--root` installs into
another tree (an image being built, or a test's folder) instead of `/`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List

from appliance.config import EXAMPLE

SOURCE = Path(__file__).resolve().parents[1] / "systemd"
# source file -> where it goes, relative to the root
PLACES = {
    "typewriter.service": "etc/systemd/system/typewriter.service",
    "99-typewriter.rules": "etc/udev/rules.d/99-typewriter.rules",
    "typewriter.sysusers": "usr/lib/sysusers.d/typewriter.conf",
    "typewriter.tmpfiles": "usr/lib/tmpfiles.d/typewriter.conf",
}
ENABLE_LINK = "etc/systemd/system/multi-user.target.wants/typewriter.service"


class UnitsError(Exception):
    """The unit files cannot be found or written; the message names the fix."""


def install(root: Path, enable: bool = True) -> List[Path]:
    """Copy the files under root (and enable the service); returns what was written."""
    if not (SOURCE / "typewriter.service").exists():
        raise UnitsError(f"the unit files are not next to this installation ({SOURCE}): run "
                         "install-units from a checkout of the project")
    written = []
    try:
        for name, place in PLACES.items():
            target = root / place
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SOURCE / name, target)
            written.append(target)
        config = root / "etc/typewriter/config.toml"
        if not config.exists():  # never overwrite the maker's settings
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(EXAMPLE)
            written.append(config)
        if enable:
            link = root / ENABLE_LINK
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/etc/systemd/system/typewriter.service")
            written.append(link)
    except OSError as e:
        raise UnitsError(f"cannot install under {root}: {e} (run as root, or pass --root)") from e
    return written
