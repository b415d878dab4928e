"""`typewriter image build` and `typewriter image wheelhouse`."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from image.uart import BOARDS
from image.wheelhouse import ARCHES


def cmd_build(args: argparse.Namespace) -> int:
    from appliance.persona.spec import DEFAULT_PERSONA
    from image.build import build, log_stderr, summary
    from image.settings import load

    options = {k: getattr(args, k) for k in ("base", "out", "ssh_key", "persona", "persona_key",
                                             "hostname", "user", "board",
                                             "wheelhouse", "no_wheels", "no_system_packages",
                                             "dry_run")}
    settings = load(options, Path(args.config) if args.config else None, DEFAULT_PERSONA)
    result = build(settings, log_stderr)
    print(summary(settings, result))
    return 0


def cmd_wheelhouse(args: argparse.Namespace) -> int:
    from image.build import log_stderr
    from image.wheelhouse import build

    wheels = build(Path(args.out), args.arch, args.python,
                   Path(args.engine_wheel) if args.engine_wheel else None, log_stderr)
    for wheel in wheels:
        print(wheel.path.name)
    print(f"{len(wheels)} wheels for Python {args.python} on {args.arch} in {args.out}",
          file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add `image build` and `image wheelhouse`; returns the image subparsers."""
    image = sub.add_parser("image", help="build a flashable SD card image")
    isub = image.add_subparsers(dest="image_command", required=True)

    build = isub.add_parser("build", help="turn Raspberry Pi OS Lite (64-bit) into the "
                            "appliance's image")
    build.add_argument("--config", help="a TOML file with these settings (options win)")
    build.add_argument("--base", help="Raspberry Pi OS Lite arm64 image (.img or .img.xz)")
    build.add_argument("--out", help="the image to write (with .sha256, and .bmap if "
                       "bmaptool is installed)")
    build.add_argument("--ssh-key", help="public key file for the admin user")
    build.add_argument("--persona", help="persona bundle folder (default: the shipped one)")
    build.add_argument("--persona-key", help="public key allowed only to push personas")
    build.add_argument("--hostname", help="default: typewriter")
    build.add_argument("--user", help="the admin user's name (default: admin)")
    build.add_argument("--board", choices=BOARDS, help="default: pi4 (also Pi 3)")
    build.add_argument("--wheelhouse", help="aarch64 wheels from `typewriter image wheelhouse`")
    build.add_argument("--no-wheels", action="store_true",
                       help="layout only, nothing installs on first boot (for tests)")
    build.add_argument("--no-system-packages", action="store_true", help="leave out espeak-ng "
                       "and alsa-utils (fetched from the Debian archive at build time, "
                       "installed offline on first boot)")
    build.add_argument("--dry-run", action="store_true", help="list every change, write nothing")
    build.set_defaults(func=cmd_build)

    wheels = isub.add_parser("wheelhouse", help="build the wheels the image installs offline")
    wheels.add_argument("--arch", choices=ARCHES, default="aarch64")
    wheels.add_argument("--python", default="3.11",
                        help="the image's Python: 3.11 for Bookworm, 3.13 for Trixie")
    wheels.add_argument("--engine-wheel", help="use this llama-cpp-python wheel instead of "
                        f"building one (e.g. one built on a Pi; this machine: "
                        f"{platform.machine()})")
    wheels.add_argument("--out", required=True, help="folder for the wheels")
    wheels.set_defaults(func=cmd_wheelhouse)
    return isub
