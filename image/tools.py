"""Running the disk tools: a missing tool or a failed call becomes one `ImageError` line."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional, Sequence

from appliance.errors import UserError

# tool -> the Debian package that has it
PACKAGES = {
    "sfdisk": "fdisk", "mcopy": "mtools", "mtype": "mtools", "mdir": "mtools",
    "mmd": "mtools", "debugfs": "e2fsprogs", "resize2fs": "e2fsprogs",
    "e2fsck": "e2fsprogs", "dumpe2fs": "e2fsprogs", "xz": "xz-utils",
    "openssl": "openssl",
}


class ImageError(UserError):
    """The image cannot be built as asked; the message names the problem and the fix."""


def need(*tools: str) -> None:
    """Refuse up front when a tool is missing, naming the package to install."""
    missing = [t for t in tools if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        packages = " ".join(sorted({PACKAGES.get(t, t) for t in missing}))
        raise ImageError(f"{', '.join(missing)} not found: install them "
                         f"(apt-get install {packages})")


def path_of(tool: str) -> str:
    return shutil.which(tool) or f"/usr/sbin/{tool}"


def run(args: Sequence[str], input: Optional[str] = None, what: str = "") -> str:
    """Run a tool; its stdout, or ImageError with its stderr."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    done = subprocess.run([path_of(args[0]), *args[1:]], input=input, capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ImageError(f"{what or args[0]} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout
