"""`typewriter install-units`: put the unit, udev rule, user and config in place.

The files live in the project's `systemd/` folder, which a wheel installs as
`<prefix>/share/typewriter/systemd`; `--root` installs into another tree (an
image being built, or a test's folder) instead of `/`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional

from appliance.errors import UserError
from appliance.system.config import EXAMPLE


def _source() -> Path:
    """The unit files: beside the package in a checkout, else where the wheel put them."""
    checkout = Path(__file__).resolve().parents[2] / "systemd"
    if (checkout / "typewriter.service").exists():
        return checkout
    return Path(sys.prefix) / "share" / "typewriter" / "systemd"


SOURCE = _source()
# The service runs as its own user with ProtectHome=yes: it cannot reach a home folder.
UNREACHABLE = (Path("/home"), Path("/root"), Path("/run/user"))
# source file -> where it goes, relative to the root
PLACES = {
    "typewriter.service": "etc/systemd/system/typewriter.service",
    "99-typewriter.rules": "etc/udev/rules.d/99-typewriter.rules",
    "typewriter.sysusers": "usr/lib/sysusers.d/typewriter.conf",
    "typewriter.tmpfiles": "usr/lib/tmpfiles.d/typewriter.conf",
}
ENABLE_LINK = "etc/systemd/system/multi-user.target.wants/typewriter.service"


class UnitsError(UserError):
    """The unit files cannot be found or written; the message names the fix."""


def this_command() -> Path:
    """The `typewriter` command of the installation running now."""
    return Path(sys.prefix) / "bin" / "typewriter"


def install(root: Path, enable: bool = True, command: Optional[Path] = None) -> List[Path]:
    """Copy the files under root (and enable the service); returns what was written.

    command, when given, replaces the program of the unit's ExecStart (as shipped,
    the SD card image's /opt/typewriter/venv): the service then runs that one.
    """
    if not (SOURCE / "typewriter.service").exists():
        raise UnitsError(f"the unit files are not next to this installation ({SOURCE}): "
                         "reinstall the typewriter-appliance package, or run install-units "
                         "from a checkout of the project")
    if command is not None:
        check_command(command)
    written = []
    try:
        for name, place in PLACES.items():
            target = root / place
            target.parent.mkdir(parents=True, exist_ok=True)
            text = (SOURCE / name).read_text()
            if name == "typewriter.service" and command is not None:
                text = re.sub(r"^ExecStart=\S+", f"ExecStart={command}", text, flags=re.M)
            target.write_text(text)
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


def check_command(command: Path) -> None:
    """Refuse an ExecStart the service could not run, naming where to install instead."""
    if not command.is_absolute():
        raise UnitsError(f"--command {command} must be an absolute path")
    if any(command.is_relative_to(place) for place in UNREACHABLE):
        raise UnitsError(
            f"the service cannot run {command}: it runs as the typewriter user, which may "
            f"not enter home folders (ProtectHome=yes). Install the appliance outside them: "
            f"sudo python3 -m venv /opt/typewriter/venv && sudo /opt/typewriter/venv/bin/pip "
            f"install 'typewriter-appliance[pi]', then run install-units from there "
            f"(or pass --command)")
