"""`typewriter ctl`, `transcript`, `config`, `install-units`: looking after an appliance."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from appliance.errors import UserError
from appliance.system.config import EXAMPLE as CONFIG_EXAMPLE
from appliance.system.config import default_path
from appliance.system.config import load as load_config
from appliance.system.control import default_path as control_path
from appliance.system.control import request as control_request
from appliance.system.journal import Journal, export
from appliance.system.paths import state_dir


def register(sub: argparse._SubParsersAction) -> None:
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



def cmd_ctl(args: argparse.Namespace) -> int:
    message = {"command": args.action}
    if args.text:
        message["text"] = " ".join(args.text)
    answer = control_request(Path(args.control) if args.control else control_path(), message)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif not answer.get("ok"):
        raise UserError(answer.get("error", "the appliance refused"))
    elif args.action == "status":
        print(answer["status"])
        print(f"exchanges: {answer['exchanges']}, busy: {answer['busy']}, "
              f"context: {answer['context_tokens']} of {answer['n_ctx']} tokens, "
              f"keys lost in the typewriter: {'yes' if answer['overflow'] else 'no'}")
    else:
        print("ok")
    return 0 if answer.get("ok") else 1


def cmd_install_units(args: argparse.Namespace) -> int:
    from appliance.system.units import install, this_command

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
        raise UserError(f"no transcript in {folder}: pass the appliance's --state-dir")
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
        raise UserError(f"--since {text!r}: give a date (2026-11-22 or 2026-11-22T18:00) "
                       "or a duration (30m, 2h, 7d)") from None
