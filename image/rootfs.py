"""The ext4 root file system, changed with `debugfs -w` and resized with resize2fs.

debugfs exits 0 even when a command fails, so every run's stderr is read: any
line but its version banner is an error. Changes are collected and applied in
one debugfs run.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

from image.tools import ImageError, path_of, run

_BANNER = re.compile(r"^debugfs \d")
_LINK = re.compile(r'Fast link dest: "(.*)"')


def _debugfs(fs: Path, *args: str) -> tuple[str, List[str]]:
    done = subprocess.run([path_of("debugfs"), *args, str(fs)], capture_output=True, text=True)
    errors = [line for line in done.stderr.splitlines() if line.strip() and
              not _BANNER.match(line)]
    return done.stdout, errors


class RootFS:
    """One ext4 file system image (the root partition, extracted to its own file)."""

    def __init__(self, fs: Path):
        self.fs = fs
        self._known: Dict[str, bool] = {}
        self._script: List[str] = []
        self._files: List[Path] = []

    # -- reading ---------------------------------------------------------------------------

    def stat(self, path: str) -> Optional[str]:
        out, errors = _debugfs(self.fs, "-R", f"stat {path}")
        return None if errors else out

    def exists(self, path: str) -> bool:
        if path not in self._known:
            self._known[path] = self.stat(path) is not None
        return self._known[path]

    def read(self, path: str, depth: int = 0) -> Optional[str]:
        """A file's text, following symbolic links; None when it is not there."""
        info = self.stat(path)
        if info is None or depth > 8:
            return None
        link = _LINK.search(info)
        if "Type: symlink" in info:
            if not link:
                return None
            return self.read(posixpath.normpath(posixpath.join(posixpath.dirname(path),
                                                               link.group(1))), depth + 1)
        out, errors = _debugfs(self.fs, "-R", f"cat {path}")
        return None if errors else out

    def space(self) -> tuple[int, int]:
        """(size, free) in bytes."""
        header = run(["dumpe2fs", "-h", str(self.fs)], what="reading the root file system")
        fields = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
        block = int(fields["Block size"])
        return int(fields["Block count"]) * block, int(fields["Free blocks"]) * block

    # -- changing (collected, then applied at once) ----------------------------------------

    def _own(self, path: str, kind: int, mode: int, uid: int, gid: int) -> None:
        self._script += [f'sif "{path}" mode 0{kind | mode:o}', f'sif "{path}" uid {uid}',
                         f'sif "{path}" gid {gid}']

    def mkdir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        """Make a folder and any missing parents (parents get 0755 root)."""
        parent = posixpath.dirname(path)
        if parent != "/" and not self.exists(parent):
            self.mkdir(parent)
        if not self.exists(path):
            self._script.append(f'mkdir "{path}"')
            self._known[path] = True
        self._own(path, 0o040000, mode, uid, gid)

    def write(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0,
              gid: int = 0) -> None:
        with tempfile.NamedTemporaryFile(delete=False, prefix="typewriter-image-") as f:
            f.write(data)
        self._files.append(Path(f.name))
        self.copy(Path(f.name), path, mode, uid, gid)

    def copy(self, source: Path, path: str, mode: int = 0o644, uid: int = 0,
             gid: int = 0) -> None:
        self.mkdir_parent(path)
        if self.exists(path):
            self._script.append(f'rm "{path}"')
        self._script.append(f'write "{source}" "{path}"')
        self._known[path] = True
        self._own(path, 0o100000, mode, uid, gid)

    def symlink(self, path: str, target: str) -> None:
        self.mkdir_parent(path)
        if self.exists(path):
            self._script.append(f'rm "{path}"')
        self._script.append(f'symlink "{path}" "{target}"')
        self._known[path] = True

    def mkdir_parent(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if not self.exists(parent):
            self.mkdir(parent)

    def apply(self) -> None:
        """Run the collected changes in one debugfs session; any error stops the build."""
        for line in self._script:
            if "\n" in line or line.count('"') not in (2, 4):
                raise ImageError(f"a path with a line break or a quote cannot go into the "
                                 f"image: {line!r}; rename it")
        with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
            script.write("\n".join(self._script) + "\n")
            script.flush()
            try:
                _, errors = _debugfs(self.fs, "-w", "-f", script.name)
            finally:
                for f in self._files:
                    f.unlink(missing_ok=True)
                self._files.clear()
        self._script.clear()
        if errors:
            raise ImageError(f"writing the root file system failed: {errors[0].strip()}"
                             + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))

    # -- size ------------------------------------------------------------------------------

    def resize(self, size: int) -> None:
        """Grow the file system to `size` bytes (its file must already be that long)."""
        # resize2fs insists on a freshly checked file system; -p repairs only what is safe.
        run(["e2fsck", "-fp", str(self.fs)], what="checking the base's root file system")
        run(["resize2fs", str(self.fs), f"{size // 1024}K"], what="growing the root file system")

    def check(self) -> None:
        run(["e2fsck", "-fn", str(self.fs)], what="checking the root file system")
