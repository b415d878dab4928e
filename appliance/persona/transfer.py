"""Pushing a persona bundle over SSH to a typewriter, and receiving it there.

The workstation runs `typewriter persona push`, which starts `ssh HOST typewriter
persona receive` and speaks a small protocol over the pipe: a header line, a JSON
line describing the bundle, the device's answer (`send` or `have`), the files'
bytes, then the device's progress lines ending in `done:` or `error:`. On the
device, `receive` is the forced command of a dedicated key, so that key can do
this and nothing else. The upload goes to a staging folder, is validated in a
limited child process, and only then renamed into place.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, Callable, List, Optional, TextIO

from appliance.errors import UserError
from appliance.persona.bundle import SUMS, BundleError, parse_sums, plain_name, verify
from appliance.persona.store import PersonaStore, StoreError, check_name
from appliance.persona.validate import Limits, validate

HELLO = "TYPEWRITER-PUSH 1"
MAX_HEADER = 1 << 20
MAX_FILES = 16
DISK_MARGIN = 64 << 20  # never fill the SD card to the last byte
CHUNK = 1 << 20


class TransferError(UserError):
    """A push or receive that failed; the message names the problem and the fix."""


# -- the device side --------------------------------------------------------------------


def receive(store: PersonaStore, source: BinaryIO, say: Callable[[str], None],
            limits: Limits, activate: Callable[[str], str]) -> str:
    """Take one bundle from `source` into the store; returns its name. Raises TransferError.

    `activate(name)` switches the appliance (or records the choice for its next start)
    and returns a line to report.
    """
    if source.readline(64).decode("ascii", "replace").strip() != HELLO:
        raise TransferError("not a persona upload: use `typewriter persona push` to send one")
    try:
        header = json.loads(source.readline(MAX_HEADER))
        name, sums, files, wants_active = (header["name"], header["sums"], header["files"],
                                           bool(header.get("activate")))
        sizes = {f["name"]: int(f["size"]) for f in files}
    except (ValueError, KeyError, TypeError):
        raise TransferError("the upload's header is malformed: update typewriter on the "
                            "workstation and push again") from None
    try:
        check_name(name)
    except StoreError as e:
        raise TransferError(str(e)) from None
    _check_listing(sizes, sums)
    if store.same(name, sums):
        say("have")
        say(f"{name}: already installed, unchanged")
    else:
        say("send")
        with store.staging() as staged:
            _take_files(source, staged, sizes, sums)
            say(f"received {sum(sizes.values()) / 1e6:.1f} MB; validating")
            verdict = validate(staged, limits)
            for check in verdict.checks:
                say(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
            if not verdict.ok:
                raise TransferError(f"rejected: {verdict.reason}; the active persona is "
                                    "unchanged")
            try:
                store.install(staged, name)
            except StoreError as e:
                raise TransferError(str(e)) from None
        say(f"{name}: installed")
    if wants_active:
        say(activate(name))
    return name


def _check_listing(sizes: dict, sums: str) -> None:
    if not 1 <= len(sizes) <= MAX_FILES:
        raise TransferError(f"a bundle has 1 to {MAX_FILES} files, this one {len(sizes)}")
    for file, size in sizes.items():
        if not plain_name(file) or file == SUMS:
            raise TransferError(f"{file!r} is not a plain file name (paths are refused): "
                                "rebuild the bundle")
        if size < 0:
            raise TransferError(f"{file}: negative size in the header")
    try:
        listed = parse_sums(sums)
    except BundleError as e:
        raise TransferError(str(e)) from None
    if set(sizes) != set(listed):
        raise TransferError("the files sent are not the files in SHA256SUMS: reseal the bundle")


def _take_files(source: BinaryIO, staged: Path, sizes: dict, sums: str) -> None:
    free = shutil.disk_usage(staged).free
    total = sum(sizes.values())
    if total + DISK_MARGIN > free:
        raise TransferError(f"the bundle needs {total >> 20} MiB and the device has "
                            f"{free >> 20} MiB free: remove a persona first "
                            "(typewriter persona remove NAME)")
    for file, size in sizes.items():
        with open(staged / file, "wb") as out:
            left = size
            while left:
                block = source.read(min(CHUNK, left))
                if not block:
                    raise TransferError(f"the upload ended inside {file}: push again")
                out.write(block)
                left -= len(block)
    (staged / SUMS).write_text(sums, encoding="ascii")


def receive_command(store: PersonaStore, limits: Limits, activate: Callable[[str], str],
                    stdin: BinaryIO, stdout: TextIO) -> int:
    """`typewriter persona receive`: the forced command's whole life, one line per step."""
    def say(line: str) -> None:
        stdout.write(line + "\n")
        stdout.flush()

    # A dropped connection (SIGHUP, SIGPIPE) or a stop must unwind, so staging is cleaned.
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, _unwind)
    try:
        name = receive(store, stdin, say, limits, activate)
    except TransferError as e:
        say(f"error: {e}")
        return 1
    except BrokenPipeError:
        return 1
    say(f"done: {name}")
    return 0


def _unwind(signum: int, frame) -> None:
    raise TransferError(f"interrupted by signal {signum}: push again")


# -- the workstation side ---------------------------------------------------------------


def push(bundle: Path, host: str, activate: bool, ssh: List[str], say: Callable[[str], None],
         name: Optional[str] = None) -> None:
    """Send a bundle to `typewriter persona receive` on host over ssh; raises TransferError."""
    bundle = Path(bundle)
    try:
        verify(bundle)
    except BundleError as e:
        raise TransferError(str(e)) from None
    name = check_name(name or bundle.resolve().name.lower())
    files = sorted(p.name for p in bundle.iterdir() if p.name != SUMS)
    header = {"name": name, "activate": activate,
              "sums": (bundle / SUMS).read_text(encoding="ascii"),
              "files": [{"name": f, "size": (bundle / f).stat().st_size} for f in files]}
    command = [*ssh, host, "typewriter persona receive"]
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    except FileNotFoundError:
        raise TransferError(f"{ssh[0]} not found: install an OpenSSH client") from None
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(f"{HELLO}\n{json.dumps(header)}\n".encode())
        proc.stdin.flush()
        answer = proc.stdout.readline().decode("utf-8", "replace").strip()
        if answer == "send":
            for f in files:
                with open(bundle / f, "rb") as src:
                    shutil.copyfileobj(src, proc.stdin, CHUNK)
            say(f"sent {sum(x['size'] for x in header['files']) / 1e6:.1f} MB")
        elif answer != "have":
            _finish(proc, answer, say)
            return
        proc.stdin.close()
    except BrokenPipeError:
        pass
    _finish(proc, "", say)


def _finish(proc: subprocess.Popen, first: str, say: Callable[[str], None]) -> None:
    assert proc.stdout is not None
    last = first
    if first:
        say(first)
    for raw in proc.stdout:
        last = raw.decode("utf-8", "replace").rstrip("\n")
        if last != "have":
            say(last)
    code = proc.wait()
    if last.startswith("error: "):
        raise TransferError(last[len("error: "):])
    if code != 0 or not last.startswith("done: "):
        raise TransferError(f"the typewriter did not accept the push (ssh exit {code}): "
                            "check the host, that the key is authorized, and that "
                            "`typewriter` is installed there")


# -- the key that may only push ---------------------------------------------------------


def authorized_keys_line(pubkey: str, command: str = "typewriter persona receive") -> str:
    """The `authorized_keys` line that limits a key to receiving personas."""
    parts = pubkey.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")) or \
            "\n" in pubkey.strip():
        raise TransferError("not an OpenSSH public key (expected 'ssh-ed25519 AAAA... comment'):"
                            " give the contents of the .pub file")
    return f'restrict,command="{command}" {" ".join(parts)}'


def authorize_key(pubkey: str, authorized_keys: Path, command: str) -> bool:
    """Add the restricted line once; returns False if the key was already there."""
    line = authorized_keys_line(pubkey, command)
    key = " ".join(line.split()[1:3])
    authorized_keys.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    existing = authorized_keys.read_text() if authorized_keys.exists() else ""
    if any(key in old for old in existing.splitlines()):
        return False
    with open(authorized_keys, "a") as f:
        if existing and not existing.endswith("\n"):
            f.write("\n")
        f.write(line + "\n")
    os.chmod(authorized_keys, 0o600)
    return True


def receive_command_line(config: Optional[Path]) -> str:
    """The forced command to put in authorized_keys, pointing at this installation."""
    exe = shutil.which("typewriter") or f"{sys.executable} -m appliance.cli"
    extra = f" --config {shlex.quote(str(config))}" if config else ""
    return f"{exe} persona receive{extra}"
