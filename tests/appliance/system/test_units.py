"""The unit files pass the real systemd-analyze, with a low exposure score; the udev rule
parses as udev(7) reads it, key by key (and passes udevadm verify where udev has it)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[3] / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed "
                                   "(apt-get install systemd)")


def unit_for_analysis(tmp_path):
    """The service as shipped, with ExecStart pointing at a binary this machine has
    (verify checks that the command exists; the venv lives on the Pi)."""
    text = (UNITS / "typewriter.service").read_text()
    text = text.replace("/opt/typewriter/venv/bin/typewriter", shutil.which("true"))
    unit = tmp_path / "typewriter.service"
    unit.write_text(text)
    return unit


@needs_analyze
def test_verify_is_clean(tmp_path):
    result = subprocess.run([ANALYZE, "verify", str(unit_for_analysis(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines()
                if "typewriter.service" in line or "Unknown" in line]
    assert problems == [], result.stderr


@needs_analyze
def test_exposure_is_low(tmp_path):
    result = subprocess.run([ANALYZE, "security", "--offline=yes",
                             str(unit_for_analysis(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0


# udev(7): a rule is comma-separated KEY[{attribute}]OPERATOR"value" pairs on one line.
UDEV_PAIR = re.compile(r'\s*([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*'
                       r'"((?:[^"\\]|\\.)*)"\s*')
UDEV_MATCH_KEYS = {"ACTION", "DEVPATH", "KERNEL", "KERNELS", "NAME", "SUBSYSTEM", "SUBSYSTEMS",
                   "DRIVER", "DRIVERS", "ATTR", "ATTRS", "ENV", "TAG", "TAGS", "TEST", "PROGRAM",
                   "RESULT", "SYMLINK", "CONST", "SYSCTL"}
UDEV_ASSIGN_KEYS = {"NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "TAG", "ENV", "ATTR", "RUN",
                    "LABEL", "GOTO", "IMPORT", "OPTIONS", "SECLABEL", "SYSCTL"}
ASSIGN = {"=", "+=", "-=", ":="}
MATCH = {"==", "!="}
TYPEWRITER = [("SYMLINK", None, "+=", "typewriter"), ("GROUP", None, "=", "dialout"),
              ("MODE", None, "=", "0660"), ("TAG", None, "+=", "systemd")]


def parse_udev_rules(text):
    """Each rule as [(key, attribute, operator, value)]; AssertionError on a malformed pair,
    a key udev does not know, or an operator the key does not take."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs, pos = [], 0
        while pos < len(line):
            match = UDEV_PAIR.match(line, pos)
            assert match, f"line {number}: cannot parse from {line[pos:]!r}"
            key, attribute, operator, value = match.groups()
            assert operator in MATCH | ASSIGN
            allowed = UDEV_MATCH_KEYS if operator in MATCH else UDEV_ASSIGN_KEYS
            assert key in allowed, f"line {number}: {key} does not take {operator}"
            assert (attribute is not None) == (key in ("ATTR", "ATTRS", "ENV", "TEST",
                                                       "SYSCTL")), f"line {number}: {key}"
            pairs.append((key, attribute, operator, value))
            pos = match.end()
            if pos < len(line):
                assert line[pos] == ",", f"line {number}: expected a comma at {line[pos:]!r}"
                pos += 1
        assert any(op in MATCH for _, _, op, _ in pairs), f"line {number}: matches everything"
        rules.append(pairs)
    return rules


def test_udev_rule_names_the_gpio_uart_only():
    """The firmware speaks only on the Pico's UART0: its USB port (CDC ACM, 2e8a:0005) is
    MicroPython's REPL and must never become /dev/typewriter."""
    rules = parse_udev_rules((UNITS / "99-typewriter.rules").read_text())
    assert rules == [
        [("KERNEL", None, "==", "ttyAMA0")] + TYPEWRITER,  # the Pi's GPIO UART (PL011)
        # ... or its mini UART, never a placeholder 8250 port (type 0: no UART behind it,
        # as on QEMU's virt machine, where the boot test found /dev/typewriter -> ttyS0)
        [("KERNEL", None, "==", "ttyS0"), ("ATTR", "type", "!=", "0")] + TYPEWRITER,
    ]


@pytest.mark.parametrize("broken,why", [
    ('KERNEL="ttyS0", SYMLINK+="typewriter"', "KERNEL does not take ="),
    ('KERNEL=="ttyS0" SYMLINK+="typewriter"', "no comma"),
    ('KERNEL=="ttyS0", SYMLINK+=typewriter', "value unquoted"),
    ('ATTRS{idVendor}=="2e8a", MODE=="0660"', "MODE does not take =="),
    ('SYMLINK+="typewriter", MODE="0660"', "no match: every device"),
])
def test_the_udev_parser_catches_mistakes(broken, why):
    with pytest.raises(AssertionError):
        parse_udev_rules(broken)


UDEVADM = shutil.which("udevadm")


def udevadm_has_verify():
    if UDEVADM is None:
        return False
    usage = subprocess.run([UDEVADM, "--help"], capture_output=True, text=True).stdout
    return " verify " in usage or "\n  verify" in usage


@pytest.mark.skipif(not udevadm_has_verify(), reason="udevadm verify needs udev >= 253 "
                    "(apt-get install udev; Debian 12 has 252, without verify)")
def test_udevadm_verify_accepts_the_rule(tmp_path):
    result = subprocess.run([UDEVADM, "verify", str(UNITS / "99-typewriter.rules")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


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


def service_settings():
    settings = {}
    for line in (UNITS / "typewriter.service").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_sandbox_leaves_the_appliance_cpuinfo_and_meminfo():
    """ProcSubset=pid hides /proc/cpuinfo and /proc/meminfo: the mmap choice (does llama.cpp
    repack?) and the memory check of a persona would silently guess."""
    settings = service_settings()
    assert settings.get("ProcSubset", ["all"]) == ["all"]
    assert settings["ProtectProc"] == ["invisible"]  # other processes stay hidden


def memory_max(board_bytes):
    (value,) = service_settings()["MemoryMax"]
    if value.endswith("%"):
        return board_bytes * float(value[:-1]) / 100
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def test_memory_max_fits_the_models_the_comment_names():
    MB = 1 << 20
    # llama-3.2-1b Q4: a 728 MB file, 16 layers x 512 KV values per token at 2048 tokens in
    # Q8_0, and the runtime validate.py counts (128 MB)
    one_b = 728 * MB + 2 * 16 * 2048 * 512 * 34 // 32 + 128 * MB
    assert memory_max(2048 * MB) >= one_b, "a 1B model on a 2 GB board"
    # SmolLM2-360M Q4 (~270 MB) on a Zero 2 W, leaving the OS its ~100 MB
    assert 270 * MB + 128 * MB <= memory_max(512 * MB) <= 512 * MB - 96 * MB
    assert service_settings()["MemorySwapMax"] == ["0"]
