"""The builder's small parts: boot settings per board and wiring, wheel matching per Python."""

from __future__ import annotations

import platform

import pytest

from image import uart
from image.tools import ImageError
from image.wheelhouse import cross_environment, resolve
from tests.image.conftest import repack


@pytest.mark.parametrize("board,lines", [
    ("pi4", ["enable_uart=1", "dtoverlay=disable-bt"]),
    ("zero2w", ["enable_uart=1", "dtoverlay=disable-bt"]),
    ("pi5", ["dtparam=uart0=on"]),
])
def test_config_txt_gets_the_boards_uart_once(board, lines):
    base = "dtparam=audio=on\n[cm4]\notg_mode=1\n"
    once = uart.config_txt(base, board)
    assert once.startswith(base)
    assert once.splitlines()[-len(lines):] == lines
    assert "[all]" in once.split(uart.MARK)[1]  # not inside the [cm4] section
    assert uart.config_txt(once, board) == once


def test_cmdline_loses_every_serial_console_and_keeps_the_rest():
    line = ("console=serial0,115200 console=ttyAMA0,115200 console=ttyS0 console=tty1 "
            "root=PARTUUID=1-02 rootwait\n")
    assert uart.cmdline_txt(line) == "console=tty1 root=PARTUUID=1-02 rootwait\n"


def test_the_only_wiring_is_the_gpio_uart():
    """The firmware speaks on the Pico's UART0 only; its USB port is MicroPython's REPL."""
    from tests.conftest import typewriter

    done = typewriter("image", "build", "--serial", "usb")
    assert done.returncode == 2 and "unrecognized arguments: --serial" in done.stderr
    assert not hasattr(uart, "SERIALS")


def test_wheels_for_another_python_are_the_wrong_machine(tmp_path):
    repack("markupsafe", tmp_path)  # compiled for this Python only
    here = platform.python_version_tuple()
    other = f"{here[0]}.{int(here[1]) + 2}"
    with pytest.raises(ImageError, match=f"wrong machine.*needs Python {other}"):
        resolve(tmp_path, other, platform.machine())


def test_the_cross_build_compiles_only_what_the_appliance_loads():
    args = cross_environment("aarch64")["CMAKE_ARGS"].split()
    assert "-DLLAVA_BUILD=OFF" in args and "-DGGML_NATIVE=OFF" in args
