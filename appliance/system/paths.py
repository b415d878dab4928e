"""Where the appliance keeps things: systemd's directories for the service, else XDG's for a user.

One place, so the service, the CLI and the tools agree on every path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

_XDG = {"XDG_STATE_HOME": ".local/state", "XDG_CACHE_HOME": ".cache",
        "XDG_CONFIG_HOME": ".config", "XDG_DATA_HOME": ".local/share"}


def xdg(variable: str) -> Path:
    """The user's base directory named by an XDG variable (its default when unset) / typewriter."""
    base = os.environ.get(variable) or os.path.join(os.path.expanduser("~"), _XDG[variable])
    return Path(base) / "typewriter"


def state_dir(given: Optional[str] = None) -> Path:
    """Where the transcript lives: given, systemd's StateDirectory, or the user's."""
    if given:
        return Path(given)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return xdg("XDG_STATE_HOME")


def cache_dir() -> Path:
    """Synthetic models and fetched base models: rebuilt or fetched again when deleted."""
    return xdg("XDG_CACHE_HOME")


def runtime_dir() -> Path:
    """The control socket's folder for a user (the service has its RuntimeDirectory)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/typewriter-{os.getuid()}"
    return Path(base) / "typewriter"
