"""The unit files pass the real systemd-analyze, with a low exposure score."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[3] / "systemd"
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


def test_install_units_runs_the_given_installation(tmp_path):
    from tests.conftest import typewriter

    root = tmp_path / "root"
    result = typewriter("install-units", "--root", str(root), "--command",
                        "/srv/typewriter/bin/typewriter")
    assert result.returncode == 0, result.stderr
    unit = (root / "etc/systemd/system/typewriter.service").read_text()
    assert "ExecStart=/srv/typewriter/bin/typewriter run --port /dev/typewriter" in unit
    assert "/opt/typewriter" not in unit


def test_install_units_refuses_a_command_in_a_home_folder(tmp_path):
    from tests.conftest import typewriter

    root = tmp_path / "root"
    result = typewriter("install-units", "--root", str(root), "--command",
                        "/home/pi/typewriter/.venv/bin/typewriter")
    assert result.returncode != 0
    assert "ProtectHome" in result.stderr and "/opt/typewriter/venv" in result.stderr
    assert not root.exists(), "nothing is written when the unit could not run"


def test_the_wheel_carries_the_unit_files(tmp_path):
    """install-units works from an installed wheel, without a checkout beside it."""
    import sys
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path),
                            str(UNITS.parent)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("typewriter_appliance-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for unit in UNITS.iterdir():
        assert any(n.endswith(f".data/data/share/typewriter/systemd/{unit.name}")
                   for n in names), unit.name
    # Installed on its own (no checkout on the path), the package finds them in its prefix.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"),
                    "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)
    root = tmp_path / "root"
    code = ("import sys; from pathlib import Path; from appliance.system.units import install; "
            "install(Path(sys.argv[1]), enable=False)")
    done = subprocess.run([str(venv / "bin/python"), "-c", code, str(root)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (root / "etc/systemd/system/typewriter.service").read_text() == (
        UNITS / "typewriter.service").read_text()
