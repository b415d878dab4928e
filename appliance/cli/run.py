"""`typewriter run`, `demo` and `simulate`: the appliance and a typewriter, real or simulated."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from appliance.cli.common import CPS, SECONDS, WIDTH, bounded, engine_for, engine_options, load
from appliance.errors import UserError
from appliance.system.config import default_path, merge
from appliance.system.config import load as load_config
from appliance.system.control import ControlError, ControlServer, wait_for
from appliance.system.control import default_path as control_path
from appliance.system.journal import Journal
from appliance.system.paths import state_dir
from appliance.system.service import Notifier

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="answer a typewriter on a serial port")
    run.add_argument("--port", help="serial device (e.g. /dev/serial0; or port in the config)")
    run.add_argument("--control", help="control socket (default: $RUNTIME_DIRECTORY or "
                     "$XDG_RUNTIME_DIR/typewriter/control.sock)")
    run.add_argument("--config", help="config file (default: /etc/typewriter/config.toml, "
                     "else $XDG_CONFIG_HOME/typewriter/config.toml, if present)")
    engine_options(run)
    # Unset options fall back to the config file, then to its defaults.
    run.set_defaults(width=None, ctx=None, prefill=None, kv=None, mmap=None)
    run.add_argument("--state-dir", help="transcript and link state (default: systemd's "
                     "StateDirectory, else $XDG_STATE_HOME/typewriter)")
    run.add_argument("--personas", help="installed personas (default: the config's personas, "
                     "else /var/lib/typewriter/personas)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="a simulated typewriter and the appliance in one terminal")
    engine_options(demo)
    demo.add_argument("--type", metavar="TEXT", help="type TEXT, submit, print the paper, exit")
    demo.add_argument("--cps", type=CPS, default=12.0, help="print speed, characters/second")
    demo.add_argument("--cr", type=SECONDS, default=0.5, help="carriage return time, seconds")
    demo.add_argument("--timeout", type=bounded(float, 1, 86400), default=300.0,
                      help="--type: seconds to wait")
    demo.add_argument("--state-dir", help="keep a transcript there (default: none)")
    demo.add_argument("--speak", action="store_true", help="speak the replies too, sentence "
                      "by sentence, with espeak-ng (without it, the laptop's own voice through "
                      "pyttsx3), to the sound card, else to WAV files it names")
    demo.add_argument("--speech-files", metavar="DIR", help="--speak: write the WAV files "
                      "there even with a sound card")
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser("simulate", help="a simulated typewriter on a pseudo-terminal")
    sim.add_argument("--width", type=WIDTH, default=65, help="carriage width in characters")
    sim.add_argument("--cps", type=CPS, default=12.0, help="print speed, characters/second")
    sim.add_argument("--cr", type=SECONDS, default=0.5, help="carriage return time, seconds")
    sim.add_argument("--script", help="a file whose text is typed instead of the keyboard")
    sim.set_defaults(func=cmd_simulate)



def cmd_run(args: argparse.Namespace) -> int:
    from appliance.cli.persona import store_for
    from appliance.core.loop import Appliance
    from appliance.outputs.panel import panel_for
    from appliance.outputs.speech import Speech, open_speaker
    from appliance.persona.switcher import Switcher

    config = merge(load_config(Path(args.config) if args.config else default_path()), {
        "port": args.port, "persona": args.persona, "width": args.width,
        "threads": args.threads, "context": args.ctx, "prefill": args.prefill, "kv": args.kv,
        "mmap": args.mmap, "personas": args.personas})
    if not config.port:
        raise UserError("no serial port: pass --port or set port in the config file")
    args.port, args.persona, args.width, args.threads = (config.port, config.persona,
                                                         config.width, config.threads)
    args.ctx, args.prefill, args.kv, args.mmap = (config.context, config.prefill, config.kv,
                                                  config.mmap)
    args.personas = config.personas
    notifier = Notifier()
    wait_for_port(args.port, notifier)  # before a model loads for minutes
    journal = Journal(state_dir(args.state_dir))
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


PORT_RETRY = 2.0  # seconds between tries to open a missing typewriter's port


def wait_for_port(port: str, notifier: Notifier, every: float = PORT_RETRY,
                  sleep=time.sleep) -> None:
    """Return once the port opens; until then try every `every` seconds, saying so.

    A typewriter switched off (or not plugged in) at boot is no failure: the service waits
    for it, its STATUS says what it waits for, the watchdog stays pinged and the start
    timeout extended, so systemd neither kills nor restarts it (no start-limit hit). Once
    open, the link itself handles the typewriter going away again.
    """
    import os
    import stat

    from firmware_bridge.host.link import LinkError, open_port

    if os.path.exists(port) and not stat.S_ISCHR(os.stat(port).st_mode):
        raise UserError(f"{port} is not a serial port (a file, not a device): pass the "
                        "typewriter's device (/dev/typewriter, /dev/serial0) or the path "
                        "`typewriter simulate` printed")
    told = None
    while True:
        try:
            open_port(port).close()
            if told is not None:
                log.info("the typewriter on %s is there", port)
            return
        except LinkError as e:
            reason = str(e)
        if reason != told:
            print(f"waiting for the typewriter on {port} ({reason}); Ctrl-C stops",
                  file=sys.stderr)
            log.info("waiting for the typewriter on %s: %s", port, reason)
            told = reason
        notifier.status(f"waiting for the typewriter on {port}")
        notifier.extend_timeout(every * 3 + 30)
        # Pings at the watchdog's pace while waiting (systemd asks for half its interval).
        step = min(every, notifier.watchdog_every or every)
        waited = 0.0
        while waited < every:
            notifier.watchdog()
            sleep(step)
            waited += step


def cmd_demo(args: argparse.Namespace) -> int:
    from appliance.core.loop import Appliance
    from appliance.outputs.speech import demo_speaker
    from firmware_bridge.host.simulator import SimulatedTypewriter

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
    from firmware_bridge.host.simulator import read_terminal_keys

    if not wait_for(lambda: app.link.up, 10):
        raise UserError("the simulated typewriter did not answer within 10 s")
    if args.type is None:
        print(f"Type to {name}; press Return twice to send. Ctrl-R resets, Ctrl-C quits.\n",
              file=sys.stderr)
        read_terminal_keys(sim.press)
        return
    sim.type_text(args.type + "\n\n")
    if not wait_for(lambda: app.replies >= 1 and app.idle, args.timeout):
        raise UserError(f"no complete reply within {args.timeout:.0f} s (--timeout)")
    sim.wait_printed(args.timeout)
    print(sim.paper.text())


def cmd_simulate(args: argparse.Namespace) -> int:
    from firmware_bridge.host.simulator import serve

    try:
        script = Path(args.script).read_text(encoding="utf-8") if args.script else None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the script {args.script}: {e}") from e
    return serve(args.width, args.cps, args.cr, script)
