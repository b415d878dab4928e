"""`typewriter`: the command line. Every expected failure ends as one line naming the fix."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from appliance.config import EXAMPLE as CONFIG_EXAMPLE
from appliance.config import ConfigError, default_path, merge
from appliance.config import load as load_config
from appliance.control import ControlError, ControlServer
from appliance.control import default_path as control_path
from appliance.control import request as control_request
from appliance.engine import Engine, EngineError, check_gguf, physical_cores
from appliance.journal import Journal, JournalError, export
from appliance.persona import Persona, PersonaError
from appliance.persona_store import StoreError
from appliance.service import Notifier, configure_logging
from appliance.units import UnitsError
from firmware_bridge.link import LinkError, open_port

DEFAULT_PERSONA = Path(__file__).parent / "personas" / "default"


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def state_dir(given: Optional[str]) -> Path:
    """Where the transcript lives: --state-dir, systemd's StateDirectory, or the user's."""
    if given:
        return Path(given)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "state")
    return Path(base) / "typewriter"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "typewriter"


def model_for(persona: Persona, override: Optional[str]) -> Path:
    """The model to run: --model, the persona's own, or a synthetic stand-in made on first use."""
    if override:
        return Path(override)
    if persona.model_path.exists() or not persona.synthetic:
        return persona.model_path
    try:
        return synthetic(persona.synthetic)
    except ImportError as e:
        raise CliError(
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
    mmap = {"auto": None, "on": True, "off": False}[args.mmap]
    return Engine(model, n_ctx=args.ctx, n_threads=args.threads,
                  seed=persona.generation.seed, mmap=mmap,
                  kv_quant=args.kv == "q8_0").start()


def cmd_run(args: argparse.Namespace) -> int:
    from appliance.daemon import Appliance
    from appliance.panel import panel_for
    from appliance.persona import Speech
    from appliance.persona_cli import store_for
    from appliance.speech import open_speaker
    from appliance.switcher import Switcher

    config = merge(load_config(Path(args.config) if args.config else default_path()), {
        "port": args.port, "persona": args.persona, "width": args.width,
        "threads": args.threads, "context": args.ctx, "prefill": args.prefill, "kv": args.kv,
        "mmap": args.mmap, "personas": args.personas})
    if not config.port:
        raise CliError("no serial port: pass --port or set port in the config file")
    args.port, args.persona, args.width, args.threads = (config.port, config.persona,
                                                         config.width, config.threads)
    args.ctx, args.prefill, args.kv, args.mmap = (config.context, config.prefill, config.kv,
                                                  config.mmap)
    args.personas = config.personas
    open_port(args.port).close()  # a wrong port is reported before a model loads for minutes
    journal = Journal(state_dir(args.state_dir))
    notifier = Notifier()
    notifier.extend_timeout(300)  # loading a 1B model from an SD card takes a while
    notifier.status("loading the model")
    store = store_for(args)
    persona, engine = load(args, store.folder_for(args.persona))
    switcher = Switcher(store, lambda p: engine_for(p, args), n_ctx=args.ctx)
    files = Path(config.speech_files) if config.speech_files else None
    speaker = open_speaker(Speech(config.voice, config.speech_rate, config.speech_pitch),
                           config.piper_model, files) if config.output != "print" else None
    panel = panel_for(config.panel_thinking, config.panel_ready, config.panel_button,
                      config.panel_buzzer)
    app = Appliance(persona, engine, args.port, width=args.width, prefill=args.prefill,
                    journal=journal, notifier=notifier,
                    double_return=config.submit == "double-return", switcher=switcher,
                    speaker=speaker, panel=panel,
                    printing=config.output != "speech" or speaker is None).start()
    try:
        control = ControlServer(Path(args.control) if args.control else control_path(),
                                app.control).start()
    except ControlError:
        app.close()
        engine.close()
        raise
    signal.signal(signal.SIGTERM, lambda signum, frame: app.stop())
    notifier.ready(app.describe())
    print(f"{persona.name} is listening on {args.port}. Ctrl-C stops.", file=sys.stderr)
    try:
        app.run()
    except KeyboardInterrupt:
        pass
    finally:
        notifier.stopping()
        control.close()
        app.close()
        engine.close()
        journal.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from appliance.daemon import Appliance
    from appliance.speech import demo_speaker
    from firmware_bridge.simulator import SimulatedTypewriter

    journal = Journal(Path(args.state_dir)) if args.state_dir else None
    persona, engine = load(args)
    echo = None if args.type else (lambda ch: (sys.stdout.write(ch), sys.stdout.flush()))
    sim = SimulatedTypewriter(width=args.width, cps=args.cps, cr_seconds=args.cr, on_strike=echo)
    path = sim.start()
    app = Appliance(persona, engine, path, width=args.width, prefill=args.prefill,
                    journal=journal, speaker=demo_speaker(args.speech_files) if args.speak
                    else None).start()
    try:
        with app.running():
            demo_session(app, sim, persona.name, args)
    finally:
        sim.stop()
        engine.close()
        if journal is not None:
            journal.close()
    return 0


def demo_session(app, sim, name: str, args: argparse.Namespace) -> None:
    """What the person sees: a scripted exchange (--type) or the terminal's keys."""
    from firmware_bridge.simulator import read_terminal_keys

    if not wait_for(lambda: app.link.up, 10):
        raise CliError("the simulated typewriter did not answer within 10 s")
    if args.type is None:
        print(f"Type to {name}; press Return twice to send. Ctrl-R resets, Ctrl-C quits.\n",
              file=sys.stderr)
        read_terminal_keys(sim.press)
        return
    sim.type_text(args.type + "\n\n")
    if not wait_for(lambda: app.replies >= 1 and app.idle, args.timeout):
        raise CliError(f"no complete reply within {args.timeout:.0f} s (--timeout)")
    sim.wait_printed(args.timeout)
    print(sim.paper.text())


def cmd_ctl(args: argparse.Namespace) -> int:
    message = {"command": args.action}
    if args.text:
        message["text"] = " ".join(args.text)
    answer = control_request(Path(args.control) if args.control else control_path(), message)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif not answer.get("ok"):
        raise CliError(answer.get("error", "the appliance refused"))
    elif args.action == "status":
        print(answer["status"])
        print(f"exchanges: {answer['exchanges']}, busy: {answer['busy']}, "
              f"context: {answer['context_tokens']} of {answer['n_ctx']} tokens, "
              f"keys lost in the typewriter: {'yes' if answer['overflow'] else 'no'}")
    else:
        print("ok")
    return 0 if answer.get("ok") else 1


def cmd_install_units(args: argparse.Namespace) -> int:
    from appliance.units import install, this_command

    if args.command:
        command = Path(args.command)
    elif args.root == "/" and this_command().exists():
        command = this_command()  # the installation running this command is the one to serve
    else:
        command = None  # another tree (an image being built): its own /opt/typewriter/venv
    for path in install(Path(args.root), enable=not args.no_enable, command=command):
        print(f"wrote {path}")
    if args.root == "/":
        print("now: systemd-sysusers && udevadm control --reload && systemctl daemon-reload "
              "&& systemctl start typewriter")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else default_path()
    if path is None:
        print("no config file: every setting has its default")
        return 0
    load_config(path)
    print(f"{path}: ok")
    return 0


def cmd_transcript(args: argparse.Namespace) -> int:
    folder = state_dir(args.state_dir)
    if not (folder / "transcript.sqlite3").exists():
        raise CliError(f"no transcript in {folder}: pass the appliance's --state-dir")
    journal = Journal(folder)
    try:
        sys.stdout.write(export(journal, since_time(args.since), args.format))
    finally:
        journal.close()
    return 0


def since_time(text: Optional[str]) -> float:
    """--since: an ISO date/time, or a duration back from now (30m, 2h, 7d)."""
    if not text:
        return 0.0
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        from datetime import datetime

        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise CliError(f"--since {text!r}: give a date (2026-11-22 or 2026-11-22T18:00) "
                       "or a duration (30m, 2h, 7d)") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from firmware_bridge.simulator import serve

    try:
        script = Path(args.script).read_text(encoding="utf-8") if args.script else None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read the script {args.script}: {e}") from e
    return serve(args.width, args.cps, args.cr, script)


def cmd_model_synth(args: argparse.Namespace) -> int:
    from appliance.model_synth import synth_command

    try:
        print(synth_command(args.shape, Path(args.out), quant=args.quant, seed=args.seed,
                            script=args.script))
    except ImportError as e:
        raise CliError(f"the synth tools are missing ({e.name}): "
                       "pip install 'typewriter-appliance[synth]'") from e
    except ValueError as e:
        raise CliError(str(e)) from e
    return 0


def synthetic(shape: str, script: Optional[str] = None, tag: str = "") -> Path:
    """A synthetic model of a shape, written once into the cache."""
    from appliance.model_synth import synthesize

    path = cache_dir() / "models" / f"synthetic-{shape}{tag}.gguf"
    if not path.exists():
        print(f"Writing a synthetic {shape} model to {path} (first run only)...", file=sys.stderr)
        synthesize(shape, path, script=script)
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    from appliance import bench

    tag = "-bench-" + hashlib.sha1(bench.REPLY_SCRIPT.encode()).hexdigest()[:8]
    model = synthetic(args.shape, bench.REPLY_SCRIPT, tag)
    result = bench.end_to_end(model, args.shape, args.threads or physical_cores(),
                              rate=args.rate, cps=args.cps, exchanges=args.exchanges,
                              out=Path(args.json))
    for key, value in result.items():
        print(f"{key:28} {value}")
    print(f"wrote {args.json}")
    return 0


def cmd_model_bench(args: argparse.Namespace) -> int:
    from appliance import bench

    models = [Path(p) for p in args.model] + [synthetic(shape) for shape in args.shape]
    for path in models:
        check_gguf(path)
    results = bench.model_speed(models, args.threads or physical_cores(), Path(args.json))
    for r in results:
        print("  ".join(f"{k}={v}" for k, v in r.items()))
    print(f"wrote {args.json}")
    return 0


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> bool:
    """Poll condition every `every` seconds until it holds; False if not within timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


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


def _engine_options(p: argparse.ArgumentParser) -> None:
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


def installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("typewriter-appliance")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="typewriter", description="An offline AI typewriter.")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    p.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="answer a typewriter on a serial port")
    run.add_argument("--port", help="serial device (e.g. /dev/serial0; or port in the config)")
    run.add_argument("--control", help="control socket (default: $RUNTIME_DIRECTORY or "
                     "$XDG_RUNTIME_DIR/typewriter/control.sock)")
    run.add_argument("--config", help="config file (default: /etc/typewriter/config.toml, "
                     "else $XDG_CONFIG_HOME/typewriter/config.toml, if present)")
    _engine_options(run)
    # Unset options fall back to the config file, then to its defaults.
    run.set_defaults(width=None, ctx=None, prefill=None, kv=None, mmap=None)
    run.add_argument("--state-dir", help="transcript and link state (default: systemd's "
                     "StateDirectory, else $XDG_STATE_HOME/typewriter)")
    run.add_argument("--personas", help="installed personas (default: the config's personas, "
                     "else /var/lib/typewriter/personas)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="a simulated typewriter and the appliance in one terminal")
    _engine_options(demo)
    demo.add_argument("--type", metavar="TEXT", help="type TEXT, submit, print the paper, exit")
    demo.add_argument("--cps", type=CPS, default=12.0, help="print speed, characters/second")
    demo.add_argument("--cr", type=SECONDS, default=0.5, help="carriage return time, seconds")
    demo.add_argument("--timeout", type=bounded(float, 1, 86400), default=300.0,
                      help="--type: seconds to wait")
    demo.add_argument("--state-dir", help="keep a transcript there (default: none)")
    demo.add_argument("--speak", action="store_true", help="speak the replies too, sentence "
                      "by sentence (to the sound card, else to WAV files it names)")
    demo.add_argument("--speech-files", metavar="DIR", help="--speak: write the WAV files "
                      "there even with a sound card")
    demo.set_defaults(func=cmd_demo)

    transcript = sub.add_parser("transcript", help="export the conversation transcript")
    transcript.add_argument("--state-dir", help="the appliance's state directory")
    transcript.add_argument("--since", help="a date, or a duration back from now (30m, 2h, 7d)")
    transcript.add_argument("--format", choices=("text", "json"), default="text")
    transcript.set_defaults(func=cmd_transcript)

    ctl = sub.add_parser("ctl", help="drive the running appliance (status, reset, print TEXT)")
    ctl.add_argument("action", choices=("status", "reset", "print", "say", "persona"))
    ctl.add_argument("text", nargs="*", help="the text to print (or say, or the persona)")
    ctl.add_argument("--control", help="the appliance's control socket")
    ctl.add_argument("--json", action="store_true", help="print the raw JSON answer")
    ctl.set_defaults(func=cmd_ctl)

    units = sub.add_parser("install-units", help="install the systemd unit, udev rule and user")
    units.add_argument("--root", default="/", help="install into this tree instead of /")
    units.add_argument("--no-enable", action="store_true", help="do not enable the service")
    units.add_argument("--command", help="the typewriter program the service runs (default: "
                       "this installation's when installing into /, else "
                       "/opt/typewriter/venv/bin/typewriter)")
    units.set_defaults(func=cmd_install_units)

    config = sub.add_parser("config", help="the configuration file")
    csub = config.add_subparsers(dest="config_command", required=True)
    csub.add_parser("example", help="print an example config.toml").set_defaults(
        func=lambda args: print(CONFIG_EXAMPLE, end="") or 0)
    check = csub.add_parser("check", help="check a config file, reporting every problem")
    check.add_argument("file", nargs="?", help="default: the file `run` would read")
    check.set_defaults(func=cmd_config_check)

    sim = sub.add_parser("simulate", help="a simulated typewriter on a pseudo-terminal")
    sim.add_argument("--width", type=WIDTH, default=65, help="carriage width in characters")
    sim.add_argument("--cps", type=CPS, default=12.0, help="print speed, characters/second")
    sim.add_argument("--cr", type=SECONDS, default=0.5, help="carriage return time, seconds")
    sim.add_argument("--script", help="a file whose text is typed instead of the keyboard")
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="prefill against evaluate-on-submit, end to end")
    bench.add_argument("--shape", default="tinyllama-1.1b", help="synthetic model shape")
    bench.add_argument("--json", default="bench-results/bench.json", help="results file")
    bench.add_argument("--rate", type=CPS, default=5.0, help="typing speed, characters/second")
    bench.add_argument("--cps", type=CPS, default=12.0, help="print speed, characters/second")
    bench.add_argument("--exchanges", type=bounded(int, 1, 100), default=5)
    bench.add_argument("--threads", type=bounded(int, 1, 256), default=None)
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

    from appliance import persona_cli
    from appliance.persona_build.cli import register_persona

    register_persona(persona_cli.register(sub))
    from image import cli as image_cli

    image_cli.register(sub)
    from appliance import firmware_cli

    firmware_cli.register(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except (CliError, PersonaError, EngineError, LinkError, JournalError, ConfigError,
            ControlError, UnitsError, StoreError) as e:
        for line in str(e).splitlines():
            print(f"typewriter: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run the imported module's main, so that `python -m appliance.cli` and the modules
    # that import CliError from appliance.cli share one CliError class.
    from appliance.cli import main as imported_main

    sys.exit(imported_main())
