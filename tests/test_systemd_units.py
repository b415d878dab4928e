"""The unit files pass the real systemd-analyze, with a low exposure score."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed "
                                "(apt-get install systemd)")


def unit_for_analysis(tmp_path):
    """The service as shipped, with ExecStart pointing at a binary this machine has
    (verify checks that the command exists; the venv lives on the Pi)."""
    text = (UNITS / "typewriter.service").read_text()
    text = text.replace("/opt/typewriter/venv/bin/typewriter", shutil.which("true"))
    unit = tmp_path / "typewriter.service"
    unit.write_text(text)
    return unit


def test_verify_is_clean(tmp_path):
    result = subprocess.run([ANALYZE, "verify", str(unit_for_analysis(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines()
                if "typewriter.service" in line or "Unknown" in line]
    assert problems == [], result.stderr


def test_exposure_is_low(tmp_path):
    result = subprocess.run([ANALYZE, "security", "--offline=yes",
                             str(unit_for_analysis(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


def test_udev_rule_names_the_device():
    rules = (UNITS / "99-typewriter.rules").read_text()
    assert rules.count('SYMLINK+="typewriter"') >= 2
    assert 'TAG+="systemd"' in rules


def test_install_units_into_a_root(tmp_path):
    from tests.conftest import typewriter

    root = tmp_path / "root"
    (root / "etc/typewriter").mkdir(parents=True)
    (root / "etc/typewriter/config.toml").write_text('port = "/dev/ttyAMA0"\n')
    result = typewriter("install-units", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert (root / "etc/systemd/system/typewriter.service").read_text() == (
        UNITS / "typewriter.service").read_text()
    link = root / "etc/systemd/system/multi-user.target.wants/typewriter.service"
    assert str(link.readlink()) == "/etc/systemd/system/typewriter.service"
    assert (root / "usr/lib/sysusers.d/typewriter.conf").exists()
    assert (root / "etc/udev/rules.d/99-typewriter.rules").exists()
    assert (root / "etc/typewriter/config.toml").read_text() == 'port = "/dev/ttyAMA0"\n', \
        "the maker's config is never overwritten"
    again = typewriter("install-units", "--root", str(root))
    assert again.returncode == 0, "installing twice is fine"
