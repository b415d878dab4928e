"""`typewriter persona ...`: the personas installed on a typewriter, and getting new ones there.

list, use, remove, rollback and validate work on the device (through the running
appliance when there is one, so it switches without a restart); push runs on the
workstation; receive is the forced command of the upload key; authorize-key
writes that key's line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from appliance.cli import CliError
from appliance.config import default_path, load
from appliance.control import ControlError, request
from appliance.control import default_path as control_path
from appliance.daemon import SWITCH_TIMEOUT
from appliance.persona_store import DEFAULT_ROOT, PersonaStore, StoreError
from appliance.persona_transfer import (
    TransferError,
    authorize_key,
    push,
    receive_command,
    receive_command_line,
)
from appliance.validate import Limits, validate


def store_for(args: argparse.Namespace) -> PersonaStore:
    """--personas, the config's `personas`, the system store if there is one, else the user's."""
    if getattr(args, "personas", None):
        return PersonaStore(Path(args.personas))
    config = load(Path(args.config) if getattr(args, "config", None) else default_path())
    if config.personas:
        return PersonaStore(Path(config.personas))
    if DEFAULT_ROOT.parent.is_dir():
        return PersonaStore(DEFAULT_ROOT)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return PersonaStore(Path(base) / "typewriter" / "personas")


def _appliance(args: argparse.Namespace, command: str, name: str = "") -> Optional[dict]:
    """Ask the running appliance to do it; None when no appliance is running here."""
    path = Path(args.control) if getattr(args, "control", None) else control_path()
    if not path.exists():
        return None
    try:
        return request(path, {"command": "persona", "text": f"{command} {name}".strip()},
                       timeout=SWITCH_TIMEOUT)
    except ControlError:
        return None


def activate(args: argparse.Namespace, store: PersonaStore, name: str,
             validated: bool = False) -> str:
    """Switch the running appliance, or, with none running, make it the one started next.

    `validated`: the bundle was validated just now (an upload), so with no appliance
    running it is not loaded a second time.
    """
    answer = _appliance(args, "use", name)
    if answer is not None:
        if not answer.get("ok"):
            raise CliError(answer.get("error", "the appliance refused the persona"))
        return f"{name}: active now"
    if not validated:
        verdict = validate(store.path(name), Limits.of_this_board())
        if not verdict.ok:
            raise CliError(f"{name} was not activated: {verdict.reason}")
    store.set_active(name)
    return f"{name}: active from the appliance's next start"


def cmd_list(args: argparse.Namespace) -> int:
    store = store_for(args)
    names = store.names()
    if not names:
        print(f"no personas installed in {store.root}: the shipped persona is used")
    for name in names:
        mark = "*" if name == store.active else ("previous" if name == store.previous else "")
        print(f"{mark:9} {name}")
    return 0


def cmd_use(args: argparse.Namespace) -> int:
    store = store_for(args)
    store.path(args.name)
    print(activate(args, store, args.name))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    store = store_for(args)
    target = store.rollback_target()
    print(activate(args, store, target))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    store_for(args).remove(args.name)
    print(f"removed {args.name}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    limits = Limits.of_this_board(n_ctx=args.ctx, seconds=args.timeout)
    if args.memory_mb:
        limits = Limits(args.memory_mb << 20, args.ctx, args.timeout, limits.threads)
    verdict = validate(Path(args.bundle), limits)
    if args.json:
        print(json.dumps({"accepted": verdict.ok, "reason": verdict.reason,
                          "checks": [c.__dict__ for c in verdict.checks]}, indent=2))
    else:
        print(verdict.table())
        print("accepted" if verdict.ok else f"rejected: {verdict.reason}")
    return 0 if verdict.ok else 1


def cmd_push(args: argparse.Namespace) -> int:
    ssh = ["ssh", "-o", "BatchMode=yes"]
    if args.port:
        ssh += ["-p", str(args.port)]
    if args.identity:
        ssh += ["-i", args.identity, "-o", "IdentitiesOnly=yes"]
    ssh += [f"-o{option}" for option in args.ssh_option]
    try:
        push(Path(args.bundle), args.host, args.activate, ssh,
             lambda line: print(line, flush=True), name=args.name)
    except TransferError as e:
        raise CliError(str(e)) from None
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    store = store_for(args)
    # The running model can be closed before the new one loads: its memory counts as free.
    active = store.root / store.active / "model.gguf" if store.active else None
    limits = Limits.of_this_board(freed=active.stat().st_size if active and active.exists()
                                  else 0)

    def switch(name: str) -> str:
        try:
            return activate(args, store, name, validated=True)
        except (CliError, StoreError) as e:
            raise TransferError(f"installed but not activated: {e}") from None

    return receive_command(store, limits, switch, sys.stdin.buffer, sys.stdout)


def cmd_authorize_key(args: argparse.Namespace) -> int:
    key = Path(args.pubkey).read_text() if Path(args.pubkey).is_file() else args.pubkey
    path = Path(args.authorized_keys or Path.home() / ".ssh" / "authorized_keys")
    command = receive_command_line(Path(args.config) if args.config else None)
    try:
        added = authorize_key(key, path, command)
    except TransferError as e:
        raise CliError(str(e)) from None
    print(f"{'added to' if added else 'already in'} {path}: this key can only push personas")
    return 0


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add `persona` and its device-side and transfer commands; returns its subparsers."""
    persona = sub.add_parser("persona", help="personas: list, use, push, validate, ...")
    psub = persona.add_subparsers(dest="persona_command", required=True)

    def on_device(name: str, help: str, func) -> argparse.ArgumentParser:
        p = psub.add_parser(name, help=help)
        p.add_argument("--personas", help="the persona store (default: the config's "
                       "`personas`, else /var/lib/typewriter/personas)")
        p.add_argument("--config", help="the appliance's config file")
        p.add_argument("--control", help="the running appliance's control socket")
        p.set_defaults(func=func)
        return p

    on_device("list", "installed personas (* marks the active one)", cmd_list)
    on_device("use", "switch to an installed persona", cmd_use).add_argument("name")
    on_device("rollback", "switch back to the previous persona", cmd_rollback)
    on_device("remove", "delete an installed persona (not the active one)",
              cmd_remove).add_argument("name")
    on_device("receive", "take a pushed bundle on stdin (the upload key's forced command)",
              cmd_receive)

    check = psub.add_parser("validate", help="would the appliance accept this bundle?")
    check.add_argument("bundle")
    check.add_argument("--ctx", type=int, default=2048, help="context the model must fit with")
    check.add_argument("--memory-mb", type=int, default=0,
                       help="memory the model may use (default: what this machine has free)")
    check.add_argument("--timeout", type=float, default=120.0, help="seconds allowed")
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")
    check.set_defaults(func=cmd_validate)

    send = psub.add_parser("push", help="send a bundle to a typewriter over SSH")
    send.add_argument("bundle")
    send.add_argument("--host", default="typewriter@typewriter.local", help="user@host")
    send.add_argument("--activate", action="store_true", help="switch to it once installed")
    send.add_argument("--name", help="install under this name (default: the folder's name)")
    send.add_argument("--port", type=int, help="SSH port")
    send.add_argument("--identity", "-i", help="the upload key's private key file")
    send.add_argument("--ssh-option", "-o", action="append", default=[],
                      help="an extra ssh -o option (repeatable)")
    send.set_defaults(func=cmd_push)

    key = psub.add_parser("authorize-key", help="let a public key push personas, nothing else")
    key.add_argument("pubkey", help="the public key, or its .pub file")
    key.add_argument("--authorized-keys", help="default: ~/.ssh/authorized_keys")
    key.add_argument("--config", help="the config file receive should read")
    key.set_defaults(func=cmd_authorize_key)
    return psub
