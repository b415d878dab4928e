"""`typewriter persona ...`: the personas installed on a typewriter, and getting new ones there.

list, use, remove, rollback and validate work on the device (through the running
appliance when there is one, so it switches without a restart); push runs on the
workstation; receive is the forced command of the upload key; authorize-key
writes that key's line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Optional

from appliance.cli.common import POSITIVE, store_for
from appliance.errors import UserError
from appliance.persona.store import PersonaStore, StoreError
from appliance.persona.switcher import SWITCH_TIMEOUT
from appliance.persona.transfer import (
    TransferError,
    authorize_key,
    push,
    receive_command,
    receive_command_line,
)
from appliance.persona.validate import Limits, validate
from appliance.system.control import ControlError, request
from appliance.system.control import default_path as control_path


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
            raise UserError(answer.get("error", "the appliance refused the persona"))
        return f"{name}: active now"
    if not validated:
        verdict = validate(store.path(name), Limits.of_this_board())
        if not verdict.ok:
            raise UserError(f"{name} was not activated: {verdict.reason}")
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
    push(Path(args.bundle), args.host, args.activate, ssh,
         lambda line: print(line, flush=True), name=args.name)
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
        except (UserError, StoreError) as e:
            raise TransferError(f"installed but not activated: {e}") from None

    return receive_command(store, limits, switch, sys.stdin.buffer, sys.stdout)


def cmd_authorize_key(args: argparse.Namespace) -> int:
    key = Path(args.pubkey).read_text() if Path(args.pubkey).is_file() else args.pubkey
    path = Path(args.authorized_keys or Path.home() / ".ssh" / "authorized_keys")
    command = receive_command_line(Path(args.config) if args.config else None)
    try:
        added = authorize_key(key, path, command)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}): pass --authorized-keys a file "
                        "you can write, or run as the appliance's user") from None
    print(f"{'added to' if added else 'already in'} {path}: this key can only push personas")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `persona`: its device-side, transfer, build and check commands."""
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
    _register_build(psub)


def _register_build(psub: argparse._SubParsersAction) -> None:
    """`persona build` and `persona check`: heavy libraries load inside the commands."""
    build = psub.add_parser("build", help="fine-tune a persona on a character's dialogue")
    build.add_argument("--dialogue", required=True, help="a play, `NAME: line` transcript or "
                       ".fountain screenplay")
    build.add_argument("--character", required=True, help="the speaker to become, as named "
                       "in the dialogue")
    build.add_argument("--base", default="none", help="a pretrained base to fine-tune with "
                       "LoRA: a known name (typewriter model fetch lists them: smollm2-135m) "
                       "or a LLaMA .gguf path; none: a small model from scratch")
    build.add_argument("--merge", action="store_true", help="on a base: also write the "
                       "merged model, quantized (merged.gguf), for boards without adapters")
    build.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                       help="where to train (accelerate launch also works)")
    build.add_argument("--max-steps", type=POSITIVE, help="at most this many steps per "
                       "training stage (quick runs)")
    build.add_argument("--out", required=True, help="the bundle folder to write")
    build.add_argument("--format", default="auto", choices=("auto", "play", "lines",
                                                            "fountain"))
    build.add_argument("--user-label", default="VISITOR", help="the label of the person at "
                       "the keyboard (every other speaker in training)")
    build.add_argument("--preamble", default="", help="the dialogue frame's first line, or "
                       "the chat frame's system line")
    build.add_argument("--frame", default="dialogue", choices=("dialogue", "chat"),
                       help="on a base: train and run in a `LABEL: text` dialogue document, or "
                       "in the base's own chat template with a system line")
    build.add_argument("--quant", default="q4_0", choices=("q4_0", "q4_k_m", "q8_0", "f16"))
    build.add_argument("--licence", default="not stated", help="the dialogue's licence, "
                       "for card.md")
    build.add_argument("--source", default="", help="where the dialogue came from, for "
                       "card.md")
    build.add_argument("--no-identity", dest="identity", action="store_false",
                       help="do not add the identity exchanges (what is your name?)")
    build.add_argument("--replace", action="store_true", help="replace an existing bundle")
    build.add_argument("--work", help="checkpoint folder (default: .OUT.work beside --out)")
    build.add_argument("--vocab", type=POSITIVE, help="from scratch: vocabulary size")
    build.add_argument("--embd", type=POSITIVE, help="from scratch: model width")
    build.add_argument("--layers", type=POSITIVE, help="from scratch: blocks")
    build.add_argument("--steps", type=POSITIVE, help="fine-tuning steps (LoRA steps on a "
                       "base; default 50 there, about 15 minutes on two CPU cores)")
    build.add_argument("--batch", type=POSITIVE, help="sequences per step")
    build.add_argument("--window", type=POSITIVE, help="tokens per sequence")
    build.set_defaults(func=cmd_build)

    check = psub.add_parser("check", help="probe a persona: its name, its frame, its length")
    check.add_argument("bundle")
    check.add_argument("--json", help="also write the results to this file")
    check.set_defaults(func=cmd_check)



def cmd_build(args: argparse.Namespace) -> int:

    try:
        from appliance.persona.build.build import Request, build
        from appliance.persona.build.train import Recipe
    except ImportError as e:
        raise UserError(f"persona build needs the training tools ({e.name} is missing): "
                       "pip install 'typewriter-appliance[train]'") from None
    from appliance.engine.bases import BASES

    base = (None if args.base == "none" else args.base if args.base in BASES
            else str(Path(args.base).absolute()))
    sizes = {k: getattr(args, k) for k in ("vocab", "embd", "layers", "batch", "window")
             if getattr(args, k)}
    if args.steps:
        sizes["finetune_steps"] = args.steps
    if "embd" in sizes:  # heads of 64, feed-forward three times the width
        sizes.update(heads=max(1, sizes["embd"] // 64), ff=3 * sizes["embd"])
    req = Request(dialogue=Path(args.dialogue), character=args.character, out=Path(args.out),
                  base=base, max_steps=args.max_steps, format=args.format,
                  user_label=args.user_label, preamble=args.preamble, frame=args.frame,
                  quant=args.quant,
                  licence=args.licence, source=args.source, identity=args.identity,
                  replace=args.replace, merge=args.merge, device=args.device,
                  work=Path(args.work) if args.work else None,
                  command=["typewriter", *sys.argv[1:]])
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: resumable
    try:
        recipe = Recipe.on_base(base, **sizes) if base else Recipe(**sizes)
        result = build(req, recipe, say=lambda s: print(s, file=sys.stderr))
    finally:
        signal.signal(signal.SIGTERM, previous)
    s = result.summary
    if not s:  # another of accelerate's processes: the main one reports
        return 0
    print(f"wrote {result.out}: {s['name']}, {s['params'] / 1e6:.1f}M params, "
          + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in s["files"].items())
          + f", trained {s['train_seconds']:.0f} s"
          + ("" if s["check"] is None else
             f"; gating probes {'passed' if s['check']['gating_passed'] else 'FAILED'}"))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_check(args: argparse.Namespace) -> int:
    from appliance.persona.bundle import SUMS, verify
    from appliance.persona.check import run_check, table

    folder = Path(args.bundle)
    if (folder / SUMS).exists():
        verify(folder)
    result = run_check(folder)
    print(table(result))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write {args.json} ({e.strerror}): pick another --json "
                           "file") from None
    return 0 if result["gating_passed"] else 1
