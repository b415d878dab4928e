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


def test_the_wheelhouse_carries_the_pis_extra():
    """The README promises the panel: gpiozero (and lgpio, its GPIO library, on aarch64);
    systemd-python is left out (sdist only; the appliance speaks the protocol itself)."""
    from image.wheelhouse import pi_requirements

    names = [r.split(">")[0].split("=")[0] for r in pi_requirements("aarch64")]
    assert sorted(names) == ["gpiozero", "lgpio"]
    assert [r.split(">")[0] for r in pi_requirements("x86_64")] == ["gpiozero"]


def test_a_wheelhouse_without_gpiozero_is_refused(tmp_path, host_wheelhouse):
    import shutil

    for wheel in host_wheelhouse.iterdir():
        if not wheel.name.startswith(("gpiozero-", "colorzero-")):
            shutil.copy(wheel, tmp_path)
    with pytest.raises(ImageError, match="no wheel for gpiozero"):
        resolve(tmp_path, ".".join(platform.python_version_tuple()[:2]), platform.machine())
    chosen = {w.name for w in resolve(host_wheelhouse, ".".join(
        platform.python_version_tuple()[:2]), platform.machine())}
    assert {"gpiozero", "colorzero", "typewriter-appliance", "llama-cpp-python"} <= chosen
    assert "systemd-python" not in chosen


INDEX = """\
Package: espeak-ng
Version: 1.51+dfsg-10+b1
Architecture: arm64
Filename: pool/main/e/espeak-ng/espeak-ng_1.51+dfsg-10+b1_arm64.deb
Size: 5
SHA256: {sha}
Description: a voice
 continued line: with a colon

Package: libfoo
Version: 1:2.0-1
Filename: pool/main/libf/libfoo/libfoo_2.0-1_arm64.deb
Size: 3
SHA256: 00
"""


def test_a_deb_is_checked_against_the_archives_index(tmp_path):
    import hashlib

    from image import debs

    index = debs.parse_index(INDEX.format(sha=hashlib.sha256(b"hello").hexdigest()))
    espeak = index[("espeak-ng", "1.51+dfsg-10+b1")]
    assert espeak.file == "espeak-ng_1.51+dfsg-10+b1_arm64.deb" and espeak.size == 5
    assert index[("libfoo", "1:2.0-1")].file == "libfoo_2.0-1_arm64.deb"
    good = tmp_path / espeak.file
    good.write_bytes(b"hello")
    assert debs.check(espeak, good).path == good
    assert debs.sums([debs.check(espeak, good)]) == f"{espeak.sha256}  {espeak.file}\n"
    good.write_bytes(b"hellp")  # same size, other bytes: a tampered mirror
    with pytest.raises(ImageError, match="SHA-256 is not the one in the archive"):
        debs.check(espeak, good)
    assert not good.exists(), "a bad download is not kept in the cache"


def test_the_installer_checks_and_installs_the_debs_before_the_wheels():
    from image import installer

    script = installer.SCRIPT_TEXT
    assert "sha256sum --quiet -c SHA256SUMS" in script
    assert script.index("dpkg --force-confold") < script.index("-m venv")
    assert '"$WHEELS"/*.whl' in script  # every wheel the builder chose: gpiozero, lgpio too
