"""`typewriter persona build` and `typewriter persona check`.

Heavy libraries (torch, transformers, llama.cpp) are imported inside the
commands, so registering them costs the appliance nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from appliance.persona_build import BuildError


def register_persona(psub: argparse._SubParsersAction) -> None:
    """Add build and check to the `persona` command's subparsers."""
    build = psub.add_parser("build", help="fine-tune a persona on a character's dialogue")
    build.add_argument("--dialogue", required=True, help="a play, `NAME: line` transcript or "
                       ".fountain screenplay")
    build.add_argument("--character", required=True, help="the speaker to become, as named "
                       "in the dialogue")
    build.add_argument("--base", default="none", help="none: train from scratch; or a Hugging "
                       "Face LLaMA checkpoint folder to fine-tune with LoRA")
    build.add_argument("--max-steps", type=_positive, help="at most this many steps per "
                       "training stage (quick runs)")
    build.add_argument("--out", required=True, help="the bundle folder to write")
    build.add_argument("--format", default="auto", choices=("auto", "play", "lines",
                                                            "fountain"))
    build.add_argument("--user-label", default="VISITOR", help="the label of the person at "
                       "the keyboard (every other speaker in training)")
    build.add_argument("--preamble", default="", help="the frame's first line")
    build.add_argument("--quant", default="q4_0", choices=("q4_0", "q4_k_m", "q8_0", "f16"))
    build.add_argument("--licence", default="not stated", help="the dialogue's licence, "
                       "for card.md")
    build.add_argument("--source", default="", help="where the dialogue came from, for "
                       "card.md")
    build.add_argument("--no-identity", dest="identity", action="store_false",
                       help="do not add the identity exchanges (what is your name?)")
    build.add_argument("--replace", action="store_true", help="replace an existing bundle")
    build.add_argument("--work", help="checkpoint folder (default: .OUT.work beside --out)")
    build.add_argument("--vocab", type=_positive, help="from scratch: vocabulary size")
    build.add_argument("--embd", type=_positive, help="from scratch: model width")
    build.add_argument("--layers", type=_positive, help="from scratch: blocks")
    build.add_argument("--batch", type=_positive, help="sequences per step")
    build.add_argument("--window", type=_positive, help="tokens per sequence")
    build.set_defaults(func=cmd_build)

    check = psub.add_parser("check", help="probe a persona: its name, its frame, its length")
    check.add_argument("bundle")
    check.add_argument("--json", help="also write the results to this file")
    check.set_defaults(func=cmd_check)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def cmd_build(args: argparse.Namespace) -> int:
    from appliance.cli import CliError

    try:
        from appliance.persona_build.build import Request, build
        from appliance.persona_build.train import Recipe
    except ImportError as e:
        raise CliError(f"persona build needs the training tools ({e.name} is missing): "
                       "pip install 'typewriter[train]'") from None
    base = None if args.base == "none" else str(Path(args.base).absolute())
    sizes = {k: getattr(args, k) for k in ("vocab", "embd", "layers", "batch", "window")
             if getattr(args, k)}
    if "embd" in sizes:  # heads of 64, feed-forward three times the width
        sizes.update(heads=max(1, sizes["embd"] // 64), ff=3 * sizes["embd"])
    req = Request(dialogue=Path(args.dialogue), character=args.character, out=Path(args.out),
                  base=base, max_steps=args.max_steps, format=args.format,
                  user_label=args.user_label, preamble=args.preamble, quant=args.quant,
                  licence=args.licence, source=args.source, identity=args.identity,
                  replace=args.replace,
                  work=Path(args.work) if args.work else None,
                  command=["typewriter", *sys.argv[1:]])
    previous = signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: resumable
    try:
        result = build(req, Recipe(base=base, **sizes), say=lambda s: print(s, file=sys.stderr))
    except BuildError as e:
        raise CliError(str(e)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    s = result.summary
    print(f"wrote {result.out}: {s['name']}, {s['params'] / 1e6:.1f}M params, "
          f"{s['model_bytes'] / 1e6:.1f} MB {s['quant']}, trained {s['train_seconds']:.0f} s"
          + ("" if s["check"] is None else
             f"; gating probes {'passed' if s['check']['gating_passed'] else 'FAILED'}"))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_check(args: argparse.Namespace) -> int:
    from appliance.bundle import SUMS, BundleError, verify
    from appliance.cli import CliError
    from appliance.persona_check import run_check, table

    folder = Path(args.bundle)
    if (folder / SUMS).exists():
        try:
            verify(folder)
        except BundleError as e:
            raise CliError(str(e)) from None
    result = run_check(folder)
    print(table(result))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
        except OSError as e:
            raise CliError(f"cannot write {args.json} ({e.strerror}): pick another --json "
                           "file") from None
    return 0 if result["gating_passed"] else 1
