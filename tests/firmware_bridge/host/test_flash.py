"""`typewriter firmware flash` and `check`: what goes to the board, and talking to it."""

import ast
import os
from pathlib import Path

import pytest

from firmware_bridge.board import messages as m
from firmware_bridge.host.flash import board_files
from firmware_bridge.host.link import Link
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import typewriter, wait_for

BOARD = Path(__file__).resolve().parents[3] / "firmware_bridge" / "board"
HOST_ONLY = {"link", "simulator", "flash", "simhal"}


def imported_modules(module: str, seen=None) -> set:
    """firmware_bridge modules `module` imports, directly or not, anywhere in its code."""
    seen = set() if seen is None else seen
    tree = ast.parse((BOARD / f"{module}.py").read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "firmware_bridge"):
            assert node.module.startswith("firmware_bridge.board"), (
                f"{module} imports {node.module}: the board imports nothing from the host")
            names = ([alias.name for alias in node.names] if node.module == "firmware_bridge.board"
                     else [node.module.split(".")[2]])
        for name in names:
            if name not in seen:
                seen.add(name)
                imported_modules(name, seen)
    return seen


def test_flash_copies_every_module_the_firmware_imports_and_nothing_host_only():
    paths = [path for path, _ in board_files("brother_ax")]
    modules = {Path(p).stem for p in paths if p.startswith("firmware_bridge/board/") and
               p.endswith(".py")}
    needed = imported_modules("firmware")
    assert needed >= {"device", "session", "framing", "messages", "hal", "injector", "keymap",
                      "matrix", "model"}
    assert needed <= modules, f"missing on the board: {needed - modules}"
    assert not modules & HOST_ONLY
    assert "firmware_bridge/board/typewriters/brother_ax.json" in paths
    assert paths[-1] == "main.py"
    main = dict(board_files("brother_ax"))["main.py"].decode()
    assert "run('brother_ax')" in main


def test_flash_dry_run_lists_the_files_and_the_mpremote_call():
    result = typewriter("firmware", "flash", "--dry-run", "--port", "/dev/ttyACM0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines[:-1]] == [
        path for path, _ in board_files("brother_ax")]
    assert "-m mpremote connect /dev/ttyACM0 fs cp -r firmware_bridge :" in lines[-1]


def test_flash_without_a_board_is_one_clear_line():
    result = typewriter("firmware", "flash", "--port", "/dev/ttyNOPE0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("typewriter: error: no MicroPython board answered on "
                                    "/dev/ttyNOPE0")
    assert "plug the Pico in by USB" in result.stderr


def test_check_greets_the_simulated_typewriter_and_leaves_its_keys_for_the_appliance():
    with SimulatedTypewriter(cps=2000, cr_seconds=0, name="Brother AX-325 firmware 1.0",
                             boot_id=0xC0FFEE) as sim:
        port = sim.start()
        sim.type_text("kept")
        assert wait_for(lambda: len(sim.device.keys) == 4, 5)
        result = typewriter("firmware", "check", "--port", port)
        assert result.returncode == 0, result.stderr
        assert result.stdout == ("Brother AX-325 firmware 1.0: protocol 1, caps keyboard "
                                 "printer bell, boot_id 00c0ffee\n")
        got = bytearray()
        with Link(port, on_keys=lambda boot_id, seq, codes: got.extend(codes) or True):
            assert wait_for(lambda: bytes(got) == b"kept", 10), bytes(got)
        assert sim.device.session.peer_boot_id is not None
        assert not sim.device.flags() & m.FLAG_OVERFLOW


def test_check_with_nothing_answering_is_one_clear_line():
    master, slave = os.openpty()
    try:
        result = typewriter("firmware", "check", "--port", os.ttyname(slave), "--timeout", "1")
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no typewriter firmware answered on /dev/pts/" in result.stderr
    assert "typewriter firmware flash" in result.stderr


@pytest.mark.parametrize("port", ["/dev/ttyNOPE1"])
def test_check_on_a_missing_port_says_so(port):
    result = typewriter("firmware", "check", "--port", port)
    assert result.returncode == 2 and f"serial port {port} does not exist" in result.stderr
