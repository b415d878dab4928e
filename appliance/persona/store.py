"""The personas installed on the device, which one is active, and which was before.

`/var/lib/typewriter/personas/<name>/` holds one bundle each. Uploads are written
into `.staging/` on the same filesystem and renamed into place only once
complete and valid, so a reader never sees half a bundle. `state.json` names
the active and the previous persona and is replaced atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

from appliance.errors import UserError
from appliance.persona.bundle import SUMS, BundleError, verify

DEFAULT_ROOT = Path("/var/lib/typewriter/personas")
STAGING = ".staging"
STATE = "state.json"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class StoreError(UserError):
    """A store operation that cannot be done; the message names the fix."""


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise StoreError(f"{name!r} is not a persona name: use lower-case letters, digits, "
                         "'.', '-' or '_' (e.g. 'juliet-v2')")
    return name


class PersonaStore:
    def __init__(self, root: Path = DEFAULT_ROOT):
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------

    def names(self) -> List[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and NAME.match(p.name) and (p / SUMS).exists())

    def path(self, name: str) -> Path:
        check_name(name)
        folder = self.root / name
        if not (folder / SUMS).exists():
            known = ", ".join(self.names()) or "none"
            raise StoreError(f"no persona {name!r} is installed (installed: {known}); push it "
                             "with `typewriter persona push`")
        return folder

    def folder_for(self, spec: Optional[str]) -> Optional[Path]:
        """A persona setting's folder: an installed name, a path, or (None) the active one."""
        if spec is None:
            return self.root / self.active if self.active else None
        if NAME.match(spec) and not Path(spec).is_dir():
            return self.path(spec)
        return Path(spec)

    def _state(self) -> dict:
        try:
            state = json.loads((self.root / STATE).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    @property
    def active(self) -> Optional[str]:
        name = self._state().get("active")
        return name if isinstance(name, str) and name in self.names() else None

    @property
    def previous(self) -> Optional[str]:
        name = self._state().get("previous")
        return name if isinstance(name, str) and name in self.names() else None

    def same(self, name: str, sums: str) -> bool:
        """Is `name` installed with exactly these checksums (a re-push is then a no-op)?"""
        try:
            folder = self.path(name)
            return (folder / SUMS).read_text(encoding="ascii") == sums and _verified(folder)
        except (StoreError, OSError, UnicodeDecodeError):
            return False

    # -- changing ------------------------------------------------------------------------

    def _write_state(self, active: Optional[str], previous: Optional[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump({"active": active, "previous": previous}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / STATE)

    def set_active(self, name: str) -> None:
        """Record `name` as active; the one it replaces becomes the rollback target."""
        self.path(name)
        current = self.active
        if current != name:
            self._write_state(name, current)

    def rollback_target(self) -> str:
        previous = self.previous
        if previous is None:
            raise StoreError("there is no previous persona to roll back to")
        return previous

    def remove(self, name: str) -> None:
        folder = self.path(name)
        if name == self.active:
            raise StoreError(f"{name!r} is the active persona: switch to another one first "
                             "(typewriter persona use NAME)")
        trash = self._staging() / f"removed-{name}-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        if self.previous == name:
            self._write_state(self.active, None)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder for an upload on the store's filesystem; always removed after.

        The upload holds a lock beside its folder for as long as it lives, so the
        next upload can tell an abandoned folder (its writer was killed) from a live one.
        """
        area = self._staging()
        self.sweep()
        folder = Path(tempfile.mkdtemp(dir=area, prefix="upload-"))
        lock = open(f"{folder}.lock", "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            os.unlink(lock.name)
            lock.close()

    def install(self, staged: Path, name: str) -> Path:
        """Move a complete, verified bundle into place under `name`, replacing an older one."""
        check_name(name)
        try:
            verify(staged)
        except BundleError as e:
            raise StoreError(str(e)) from e
        target = self.root / name
        old = None
        if target.exists():
            old = self._staging() / f"replaced-{name}-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(target, old)
        os.rename(staged, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def sweep(self) -> None:
        """Remove what interrupted uploads left behind (a killed receiver cannot clean up)."""
        area = self.root / STAGING
        if not area.is_dir():
            return
        for leftover in area.iterdir():
            if leftover.suffix == ".lock":
                continue
            if leftover.name.startswith("upload-"):
                try:
                    with open(f"{leftover}.lock", "a") as lock:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live upload
                os.unlink(f"{leftover}.lock")
            shutil.rmtree(leftover, ignore_errors=True)

    def _staging(self) -> Path:
        area = self.root / STAGING
        area.mkdir(parents=True, exist_ok=True)
        return area


def _verified(folder: Path) -> bool:
    try:
        verify(folder)
        return True
    except BundleError:
        return False
