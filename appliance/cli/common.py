"""What several verbs share: loading a persona's model as the command line asks, argument types."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from appliance.engine.worker import Engine
from appliance.errors import UserError
from appliance.persona.spec import DEFAULT_PERSONA, Persona
from appliance.persona.store import DEFAULT_ROOT, PersonaStore
from appliance.system.config import default_path
from appliance.system.config import load as load_config
from appliance.system.paths import cache_dir, xdg


def model_for(persona: Persona, override: Optional[str]) -> Path:
    """The model to run: --model, the persona's own (a base persona's base, checked to be the
    one its adapter was trained on), or a synthetic stand-in made on first use."""
    if override:
        return Path(override)
    persona.check_base()
    if persona.model_path.exists() or not persona.synthetic:
        return persona.model_path
    try:
        return synthetic(persona.synthetic)
    except ImportError as e:
        raise UserError(
            f"persona {persona.name!r} needs a synthetic model and the synth tools are missing "
            f"({e.name}): pip install 'typewriter-appliance[synth]'"
        ) from e


def load(args: argparse.Namespace, folder: Optional[Path] = None) -> tuple[Persona, Engine]:
    persona = Persona.load(folder or (Path(args.persona) if args.persona else DEFAULT_PERSONA))
    return persona, engine_for(persona, args, args.model)


def engine_for(persona: Persona, args: argparse.Namespace,
               override: Optional[str] = None) -> Engine:
    """Load a persona's model with the engine settings given on the command line."""
    model = model_for(persona, override)
    if persona.synthetic and not override:
        print(
            f"Persona {persona.name!r} runs on a synthetic stand-in model (random weights, shape "
            f"{persona.synthetic!r}): its replies are noise until you build a trained persona.",
            file=sys.stderr,
        )
    mmap = {"auto": None, "on": True, "off": False}[args.mmap]  # auto: the engine's choice
    return Engine(model, n_ctx=args.ctx, n_threads=args.threads,
                  seed=persona.generation.seed, mmap=mmap, kv_quant=args.kv == "q8_0",
                  adapter=None if override else persona.adapter_path).start()


def synthetic(shape: str, script: Optional[str] = None, tag: str = "") -> Path:
    """A synthetic model of a shape, written once into the cache."""
    from appliance.engine.synth import SHAPES, synthesize

    if shape not in SHAPES:
        raise UserError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    path = cache_dir() / "models" / f"synthetic-{shape}{tag}.gguf"
    if not path.exists():
        print(f"Writing a synthetic {shape} model to {path} (first run only)...", file=sys.stderr)
        synthesize(shape, path, script=script)
    return path


def bounded(kind: type, low: float, high: float):
    """An argparse type that names the allowed range when a value is outside it."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value

    return parse


WIDTH = bounded(int, 20, 250)


CPS = bounded(float, 0.5, 100000)


SECONDS = bounded(float, 0, 60)


def engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--persona", help="an installed persona's name or a persona folder "
                   "(default: the active installed persona, else the shipped one)")
    p.add_argument("--model", help="run another GGUF model in the persona's frame")
    p.add_argument("--threads", type=bounded(int, 1, 256), default=None,
                   help="llama.cpp threads (default: physical cores)")
    p.add_argument("--ctx", type=bounded(int, 256, 131072), default=2048,
                   help="context size in tokens")
    p.add_argument("--width", type=WIDTH, default=65, help="carriage width in characters")
    p.add_argument("--no-prefill", dest="prefill", action="store_false",
                   help="evaluate the prompt on submit instead of while typing")
    p.add_argument("--mmap", choices=("auto", "on", "off"), default="auto",
                   help="map the model file (auto: off where llama.cpp repacks weights)")
    p.add_argument("--kv", choices=("q8_0", "f16"), default="q8_0",
                   help="KV cache type: q8_0 halves its memory, f16 decodes a little faster")


def store_for(args: argparse.Namespace) -> PersonaStore:
    """--personas, the config's `personas`, the system store if there is one, else the user's."""
    if getattr(args, "personas", None):
        return PersonaStore(Path(args.personas))
    config = load_config(Path(args.config) if getattr(args, "config", None) else default_path())
    if config.personas:
        return PersonaStore(Path(config.personas))
    if DEFAULT_ROOT.parent.is_dir():
        return PersonaStore(DEFAULT_ROOT)
    return PersonaStore(xdg("XDG_DATA_HOME") / "personas")


POSITIVE = bounded(int, 1, 10**9)
