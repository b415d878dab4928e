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


def cmd_stand_in(args: argparse.Namespace) -> int:
    from image.build import log_stderr
    from image.standin import build, default_cache

    out = Path(args.out)
    if not out.parent.is_dir():
        from image.tools import ImageError

        raise ImageError(f"--out {out}: folder {out.parent} does not exist")
    timings = build(args.release, out, Path(args.cache) if args.cache else default_cache(),
                    log_stderr, refresh=args.refresh)
    print(f"{out}: Debian {args.release} arm64 stand-in for Raspberry Pi OS Lite ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    from image.qemu import try_image

    return try_image(args)


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

    stand = isub.add_parser("stand-in", help="an arm64 Debian image in Raspberry Pi OS's "
                            "layout, to build and `image try` without Raspberry Pi OS")
    stand.add_argument("--release", default="bookworm", help="bookworm (default) or trixie")
    stand.add_argument("--out", required=True, help="the image to write")
    stand.add_argument("--cache", help="where the stand-in is kept between runs (default: "
                       "the cache folder's image/)")
    stand.add_argument("--refresh", action="store_true", help="make it again, not from cache")
    stand.set_defaults(func=cmd_stand_in)

    trying = isub.add_parser("try", help="boot a built image in QEMU, answering a simulated "
                             "typewriter on its serial port")
    trying.add_argument("image", help="the image from `typewriter image build`")
    trying.add_argument("--type", metavar="TEXT", help="type TEXT once the appliance is "
                        "ready, wait for the reply on the paper, print it, exit 0")
    trying.add_argument("--pty", action="store_true", help="no simulated typewriter: print the "
                        "host pty that is the Pi's serial port and run until Ctrl-C")
    trying.add_argument("--timeout", type=float, default=1200.0,
                        help="--type: seconds to wait for boot and reply (1200)")
    trying.add_argument("--log", help="the guest's console to this file (default: stdout)")
    trying.add_argument("--shell", help="stand-in only: a unix socket for its root shell")
    trying.add_argument("--keep", action="store_true", help="write the boot's changes into "
                        "the image (default: they are thrown away)")
    trying.add_argument("--machine", choices=("auto", "virt", "raspi3b"), default="auto",
                        help="auto: virt for a stand-in, raspi3b for Raspberry Pi OS")
    trying.add_argument("--cps", type=float, default=200.0,
                        help="the simulated typewriter's print speed (200; a real one: 12)")
    trying.set_defaults(func=cmd_try)

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
