"""`typewriter model ...` and `typewriter bench`: models, and how fast they run here."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from appliance.cli.common import CPS, bounded, synthetic
from appliance.engine.bases import BASES, fetch
from appliance.engine.worker import check_gguf, physical_cores
from appliance.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="prefill against evaluate-on-submit, end to end")
    bench.add_argument("--shape", default="tinyllama-1.1b", help="synthetic model shape")
    bench.add_argument("--json", default="bench-results/bench.json", help="results file")
    bench.add_argument("--rate", type=CPS, default=5.0, help="typing speed, characters/second")
    bench.add_argument("--cps", type=CPS, default=12.0, help="print speed, characters/second")
    bench.add_argument("--exchanges", type=bounded(int, 1, 100), default=5)
    bench.add_argument("--threads", type=bounded(int, 1, 256), default=None)
    bench.add_argument("--persona", metavar="DIR", help="instead: an adapter persona on its "
                       "real base (default: the shipped one with `--persona default`): "
                       "adapter vs base decode, adapter swap vs reload, Q4_1 vs Q4_0, pace, "
                       "then the end-to-end run (prefill vs on submit, appliance vs bare "
                       "decode, memory) on that persona")
    bench.add_argument("--dialogue", default=str(Path(__file__).resolve().parents[2] / ".." /
                                                 "shared" / "data" / "tinyshakespeare.txt"),
                       help="--persona: the dialogue its held-out lines come from")
    bench.add_argument("--character", default="JULIET", help="--persona: whose lines")
    bench.add_argument("--rounds", type=bounded(int, 1, 100), default=5)
    bench.set_defaults(func=cmd_bench)

    model = sub.add_parser("model", help="model tools")
    msub = model.add_subparsers(dest="model_command", required=True)
    synth = msub.add_parser("synth", help="write a random-weight GGUF in a real model's shape")
    synth.add_argument("--shape", default="tiny")
    synth.add_argument("--quant", default="q4_0")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--script", help="a model that answers every prompt with this text")
    synth.add_argument("out")
    synth.set_defaults(func=cmd_model_synth)
    speed = msub.add_parser("bench", help="load, prompt and decode speed of models")
    speed.add_argument("--shape", action="append", default=[],
                       help="synthetic model shape to measure (repeatable)")
    speed.add_argument("--model", action="append", default=[],
                       help="a GGUF to measure (repeatable)")
    speed.add_argument("--threads", type=bounded(int, 1, 256), default=None)
    speed.add_argument("--json", default="bench-results/models.json", help="results file")
    speed.set_defaults(func=cmd_model_bench)
    fetch = msub.add_parser("fetch", help="download a known pretrained base model (the one "
                            "command that uses the network)")
    fetch.add_argument("name", help="a known base: " + ", ".join(BASES))
    fetch.add_argument("--out", help="a folder or .gguf path (default: the cache's models "
                       "folder, where personas look)")
    fetch.set_defaults(func=cmd_model_fetch)


def cmd_model_synth(args: argparse.Namespace) -> int:
    from appliance.engine.synth import synth_command

    try:
        print(synth_command(args.shape, Path(args.out), quant=args.quant, seed=args.seed,
                            script=args.script))
    except ImportError as e:
        raise UserError(f"the synth tools are missing ({e.name}): "
                       "pip install 'typewriter-appliance[synth]'") from e
    except ValueError as e:
        raise UserError(str(e)) from e
    except OSError as e:
        raise UserError(f"cannot write {args.out} ({e.strerror}): pick a folder you can write "
                        "to") from None
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.persona:
        return _persona_bench(args)
    from appliance.bench import end_to_end as bench

    tag = "-bench-" + hashlib.sha1(bench.REPLY_SCRIPT.encode()).hexdigest()[:8]
    model = synthetic(args.shape, bench.REPLY_SCRIPT, tag)
    result = bench.end_to_end(model, args.shape, args.threads or physical_cores(),
                              rate=args.rate, cps=args.cps, exchanges=args.exchanges,
                              out=Path(args.json))
    for key, value in result.items():
        print(f"{key:28} {value}")
    print(f"wrote {args.json}")
    return 0


def _persona_bench(args: argparse.Namespace) -> int:
    from appliance.bench.persona import persona_bench
    from appliance.persona.spec import DEFAULT_PERSONA
    from appliance.system.paths import cache_dir

    folder = DEFAULT_PERSONA if args.persona == "default" else Path(args.persona)
    dialogue = Path(args.dialogue)
    if not dialogue.is_file():
        raise UserError(f"no dialogue at {dialogue}: pass --dialogue, the file the persona "
                        "was built from")
    out = Path(args.json if args.json != "bench-results/bench.json" else
               "bench-results/persona.json")
    threads = args.threads or physical_cores()
    result = persona_bench(folder, threads, args.rounds, dialogue, args.character,
                           cache_dir() / "models", out)
    for key, value in result.items():
        print(f"{key:28} {value}")
    from appliance.bench.end_to_end import end_to_end
    from appliance.persona.spec import Persona

    persona = Persona.load(folder)
    whole = end_to_end(persona.model_path, persona.name, threads, rate=args.rate, cps=args.cps,
                       exchanges=args.exchanges, persona=folder)
    print("end to end, on this persona:")
    for key, value in whole.items():
        print(f"  {key:26} {value}")
    out.write_text(json.dumps({**result, "end_to_end": whole}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def cmd_model_bench(args: argparse.Namespace) -> int:
    from appliance.bench import end_to_end as bench

    models = [Path(p) for p in args.model] + [synthetic(shape) for shape in args.shape]
    for path in models:
        check_gguf(path)
    results = bench.model_speed(models, args.threads or physical_cores(), Path(args.json))
    for r in results:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    print(f"wrote {args.json}")
    return 0


def cmd_model_fetch(args: argparse.Namespace) -> int:
    path = fetch(args.name, Path(args.out) if args.out else None,
                 say=lambda line: print(line, file=sys.stderr))
    print(path)
    return 0
