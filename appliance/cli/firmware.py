"""`typewriter firmware flash|check`: the typewriter's microcontroller from the Pi."""

from __future__ import annotations

import argparse

from appliance.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add `firmware flash` and `firmware check` to the CLI's subcommands."""
    from firmware_bridge.host.flash import available_models

    firmware = sub.add_parser("firmware", help="the typewriter's microcontroller (RP2040)")
    fsub = firmware.add_subparsers(dest="firmware_command", required=True)
    flash = fsub.add_parser("flash", help="copy the firmware to a Pico running MicroPython")
    flash.add_argument("--port", default="auto",
                       help="the Pico's USB serial device (default: the first one found)")
    flash.add_argument("--model", default="brother_ax", choices=available_models(),
                       help="the typewriter the board sits in")
    flash.add_argument("--dry-run", action="store_true",
                       help="list what would be copied, copy nothing")
    flash.set_defaults(func=cmd_flash)
    check = fsub.add_parser("check", help="greet the firmware and show its name and caps")
    check.add_argument("--port", default="/dev/serial0",
                       help="the serial port the typewriter is on (default: /dev/serial0)")
    check.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for it")
    check.set_defaults(func=cmd_check)


def cmd_flash(args: argparse.Namespace) -> int:
    from firmware_bridge.board.model import ModelError
    from firmware_bridge.host.flash import board_files, flash, mpremote_command

    try:
        if args.dry_run:
            for path, content in board_files(args.model):
                print(f"{path}\t{len(content)} bytes")
            print("would run: " + " ".join(mpremote_command(args.port)))
            return 0
        copied = flash(args.port, args.model)
    except ModelError as e:  # the board's own error type: it cannot import the host's
        raise UserError(str(e)) from e
    print(f"flashed {len(copied)} files to the board on {args.port}; it restarts with the "
          "firmware (check it with: typewriter firmware check)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from firmware_bridge.host.flash import check, describe

    print(describe(*check(args.port, args.timeout)))
    return 0
