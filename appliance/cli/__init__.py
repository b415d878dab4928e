"""`typewriter`: the command line, one module per verb group, each with `register(sub)`.

Every expected failure is a `UserError`, printed as one line that names the fix.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from appliance.cli import admin, firmware, image, model, persona, run
from appliance.errors import UserError
from appliance.system.service import configure_logging

VERBS = (run, admin, model, persona, firmware, image)


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
    for verb in VERBS:
        verb.register(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except UserError as e:
        for line in str(e).splitlines():
            print(f"typewriter: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
