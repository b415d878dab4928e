"""`typewriter image build` on synthetic Raspberry Pi OS images, inspected with mtools/debugfs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from appliance.persona.bundle import seal
from appliance.system.config import EXAMPLE, tomllib
from appliance.system.units import ENABLE_LINK, PLACES, SOURCE
from image import installer
from tests.conftest import typewriter
from tests.image.conftest import (
    BOOT_SIZE,
    BOOT_START,
    ROOT_SIZE,
    make_base,
    partition_table,
    repack,
    run,
)

PERSONAS = "/var/lib/typewriter/personas"


class Built:
    """The built image, read the way the Pi will: boot partition by mtools, root by debugfs."""

    def __init__(self, path: Path):
        self.path = path
        parts = partition_table(path)
        self.boot_offset = parts[0]["start"] * 512
        self.root = parts[1]
        self.root_fs = f"{path}?offset={parts[1]['start'] * 512}"

    def boot(self, name: str) -> str:
        return run("mtype", "-i", f"{self.path}@@{self.boot_offset}", f"::/{name}")

    def boot_names(self) -> set:
        listing = run("mdir", "-b", "-i", f"{self.path}@@{self.boot_offset}", "::/")
        return {line.strip().removeprefix("::/") for line in listing.splitlines()}

    def stat(self, path: str) -> dict:
        out = run("debugfs", "-R", f"stat {path}", self.root_fs)
        assert out, f"{path} is not in the image"
        mode = re.search(r"Mode:\s+(\d+)", out).group(1)
        user, group = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out).groups()
        link = re.search(r'Fast link dest: "(.*)"', out)
        kind = re.search(r"Type: (\w+)", out).group(1)
        return {"mode": int(mode, 8), "uid": int(user), "gid": int(group), "type": kind,
                "link": link.group(1) if link else None}

    def read(self, path: str) -> bytes:
        return subprocess.run(["debugfs", "-R", f"cat {path}", self.root_fs],
                              capture_output=True, check=True).stdout


def build(tmp_path: Path, base: Path, *args: str, out: str = "typewriter.img"):
    return typewriter("image", "build", "--base", str(base), "--out", str(tmp_path / out),
                      *args)


def assert_file(image: Built, path: str, mode: int, content: bytes = None) -> None:
    info = image.stat(path)
    assert (info["type"], info["mode"], info["uid"], info["gid"]) == ("regular", mode, 0, 0), \
        (path, info)
    if content is not None:
        assert image.read(path) == content, path


def test_trixie_image_has_the_appliance_and_cloud_init(tmp_path, bundle, ssh_key):
    base = make_base(tmp_path / "raspios-trixie-arm64-lite.img", "trixie")
    run("xz", "-T1", "-0", str(base))
    xz = base.with_suffix(".img.xz")
    done = build(tmp_path, xz, "--ssh-key", str(ssh_key), "--persona", str(bundle),
                 "--persona-key", str(ssh_key), "--no-wheels", "--hostname", "inkwell")
    assert done.returncode == 0, done.stderr
    assert "LAYOUT ONLY" in done.stdout
    out = tmp_path / "typewriter.img"
    image = Built(out)

    # The units, udev rule, users and config, root-owned with the modes systemd expects.
    for name, place in PLACES.items():
        assert_file(image, f"/{place}", 0o644, (SOURCE / name).read_bytes())
    assert_file(image, "/etc/typewriter/config.toml", 0o644, EXAMPLE.encode())
    assert_file(image, installer.SCRIPT_PATH, 0o755, installer.SCRIPT_TEXT.encode())
    assert_file(image, installer.UNIT_PATH, 0o644, installer.UNIT_TEXT.encode())
    assert_file(image, installer.PERSONA_KEY, 0o644, ssh_key.read_bytes().strip() + b"\n")
    for link, unit in ((ENABLE_LINK, PLACES["typewriter.service"]),
                       (installer.UNIT_LINK.lstrip("/"), installer.UNIT_PATH.lstrip("/"))):
        info = image.stat(f"/{link}")
        assert (info["type"], info["link"]) == ("symlink", f"/{unit}")
        image.stat(f"/{unit}")  # the link's target is there

    # The persona bundle, byte for byte, active in the store.
    for folder, mode in (("/var/lib/typewriter", 0o750), (PERSONAS, 0o750),
                         (f"{PERSONAS}/juliet", 0o750), ("/opt/typewriter/wheels", 0o755)):
        info = image.stat(folder)
        assert (info["type"], info["mode"], info["uid"]) == ("directory", mode, 0), folder
    for file in bundle.iterdir():
        assert_file(image, f"{PERSONAS}/juliet/{file.name}", 0o644, file.read_bytes())
    assert json.loads(image.read(f"{PERSONAS}/state.json")) == {"active": "juliet",
                                                                 "previous": None}

    # Boot: the GPIO UART for the typewriter, no console on it, cloud-init seed.
    assert "console=serial0" not in image.boot("cmdline.txt")
    assert "console=tty1" in image.boot("cmdline.txt")
    config = image.boot("config.txt")
    assert config.startswith("# For more options")  # the base's settings kept
    assert config.rstrip().endswith("[all]\nenable_uart=1\ndtoverlay=disable-bt")
    assert "custom.toml" not in image.boot_names()
    user_data = image.boot("user-data")
    assert user_data.startswith("#cloud-config\n")
    data = yaml.safe_load(user_data)
    assert data["hostname"] == "inkwell" and data["ssh_pwauth"] is False
    (user,) = data["users"]
    assert user["name"] == "admin" and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == [ssh_key.read_text().strip()]
    assert "dialout" in user["groups"].split(",")
    assert "instance-id" in yaml.safe_load(image.boot("meta-data"))
    network = yaml.safe_load(image.boot("network-config"))["network"]
    assert "wifis" not in network and network["ethernets"]["eth0"]["optional"] is True

    # The root partition grew to hold the persona and is clean.
    assert image.root["size"] * 512 > ROOT_SIZE
    assert out.stat().st_size == (image.root["start"] + image.root["size"]) * 512
    assert image.boot_offset == BOOT_START and partition_table(out)[0]["size"] * 512 == BOOT_SIZE
    run("e2fsck", "-fn", image.root_fs)
    size_kb = int(re.search(r"Block count:\s+(\d+)", run("dumpe2fs", "-h", image.root_fs))
                  .group(1))
    assert size_kb * 1024 == image.root["size"] * 512  # file system fills the partition

    assert out.stat().st_blocks * 512 < out.stat().st_size / 2  # empty space stays holes
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert (tmp_path / "typewriter.img.sha256").read_text() == f"{digest}  typewriter.img\n"
    if shutil.which("bmaptool"):
        assert "<bmap" in (tmp_path / "typewriter.img.bmap").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bookworm_image_from_a_toml_file_uses_custom_toml(tmp_path, bundle, ssh_key):
    base = make_base(tmp_path / "bookworm.img", "bookworm")
    settings = tmp_path / "image.toml"
    settings.write_text(f'base = "{base}"\nssh-key = "{ssh_key}"\npersona = "{bundle}"\n'
                        'board = "pi5"\nuser = "maker"\nno-wheels = true\n')
    done = typewriter("image", "build", "--config", str(settings), "--out",
                      str(tmp_path / "t.img"))
    assert done.returncode == 0, done.stderr
    image = Built(tmp_path / "t.img")
    custom = tomllib.loads(image.boot("custom.toml"))
    assert custom["config_version"] == 1
    assert custom["system"]["hostname"] == "typewriter"
    assert custom["user"]["name"] == "maker" and custom["user"]["password_encrypted"] is True
    assert custom["user"]["password"].startswith("$6$")
    assert custom["ssh"] == {"enabled": True, "password_authentication": False,
                             "authorized_keys": [ssh_key.read_text().strip()]}
    assert not {"user-data", "meta-data"} & image.boot_names()
    config = image.boot("config.txt")
    assert "dtparam=uart0=on" in config and "disable-bt" not in config  # the Pi 5's UART
    run("e2fsck", "-fn", image.root_fs)


def test_dry_run_lists_every_change_and_writes_nothing(tmp_path, bundle, ssh_key):
    base = make_base(tmp_path / "base.img", "trixie")
    before = hashlib.sha256(base.read_bytes()).hexdigest()
    done = build(tmp_path, base, "--ssh-key", str(ssh_key), "--persona", str(bundle),
                 "--no-wheels", "--dry-run")
    assert done.returncode == 0, done.stderr
    for expected in ("/etc/systemd/system/typewriter.service", "/user-data",
                     f"{PERSONAS}/juliet/model.gguf", "grow", installer.UNIT_LINK):
        assert expected in done.stdout
    assert "/cmdline.txt" in done.stdout and "/config.txt" in done.stdout  # the GPIO UART
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img"]
    assert hashlib.sha256(base.read_bytes()).hexdigest() == before


def _not_pi(tmp_path: Path) -> Path:
    path = tmp_path / "random.img"
    path.write_bytes(os.urandom(1 << 20))
    return path


@pytest.mark.parametrize("case,expect", [
    ("random bytes", "no partition table"),
    ("debian, not raspberry pi os", "not Raspberry Pi OS"),
    ("boot without config.txt", "not a Raspberry Pi OS image"),
    ("bullseye", "does not know how to configure"),
    ("32-bit", "not a 64-bit"),
    ("missing ssh key", "ssh-keygen"),
    ("private key", "never the private key"),
    ("wrong-arch wheelhouse", "wrong machine"),
    ("incomplete wheelhouse", "no wheel for"),
    ("unsealed persona", "SHA256SUMS"),
])
def test_bad_input_is_one_line_and_nothing_at_out(tmp_path, bundle, ssh_key, case, expect):
    args = ["--ssh-key", str(ssh_key), "--persona", str(bundle), "--no-wheels"]
    base = tmp_path / "base.img"
    if case == "random bytes":
        base = _not_pi(tmp_path)
    elif case == "debian, not raspberry pi os":
        make_base(base, "bookworm", rpi=False)
    elif case == "boot without config.txt":
        make_base(base, "trixie", boot_files={"config.txt": ""})
        run("mdel", "-i", f"{base}@@{BOOT_START}", "::/config.txt")
    elif case == "32-bit":
        make_base(base, "bookworm", arch="arm")
    else:
        make_base(base, "bullseye" if case == "bullseye" else "trixie")
    if case == "missing ssh key":
        args[1] = str(tmp_path / "nokey.pub")
    if case == "private key":
        args[1] = str(ssh_key.with_suffix(""))
    if case.endswith("wheelhouse"):
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        # compiled for this machine, not a Pi; or a wheel the appliance does not need
        repack("markupsafe" if case.startswith("wrong") else "pyserial", wheels)
        args[-1:] = ["--wheelhouse", str(wheels)]
    if case == "unsealed persona":
        loose = tmp_path / "loose"
        shutil.copytree(bundle, loose)
        (loose / "SHA256SUMS").unlink()
        args[3] = str(loose)
    listing = sorted(p.name for p in tmp_path.iterdir())
    done = build(tmp_path, base, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("typewriter:")]
    assert len(errors) == 1 and expect in errors[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing new, no leftovers


def test_too_little_disk_space_is_refused_before_writing(tmp_path, bundle, ssh_key):
    """--out on a 48 MiB file system (a tmpfs in a user+mount namespace, no root needed)."""
    base = make_base(tmp_path / "base.img", "trixie")
    small = tmp_path / "small"
    small.mkdir()
    namespace = ["unshare", "-m"] + (["-r"] if os.geteuid() else [])
    probe = subprocess.run([*namespace, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a small file system here ({' '.join(namespace)}: "
                    f"{probe.stderr.strip()})")
    script = (f"mount -t tmpfs -o size=48m tmpfs {small} || exit 99; "
              f"{sys.executable} -m appliance.cli image build --base {base} --out {small}/t.img "
              f"--ssh-key {ssh_key} --persona {bundle} --no-wheels; status=$?; "
              f"echo left: $(ls -A {small}); exit $status")
    done = subprocess.run([*namespace, "sh", "-c", script], capture_output=True, text=True)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("typewriter:")]
    assert len(errors) == 1 and "too little disk space" in errors[0], done.stderr
    assert "MiB are free" in errors[0]
    assert done.stdout.strip() == "left:"


SHIPPED = Path(__file__).resolve().parents[2] / "appliance" / "personas" / "default"


@pytest.mark.slow
def test_an_adapter_persona_carries_its_base_where_the_service_finds_it(tmp_path, smollm2_base,
                                                                        ssh_key):
    from appliance.engine.bases import BASES, SYSTEM_MODELS

    base = make_base(tmp_path / "base.img", "trixie")
    done = build(tmp_path, base, "--ssh-key", str(ssh_key), "--persona", str(SHIPPED),
                 "--no-wheels")
    assert done.returncode == 0, done.stderr
    image = Built(tmp_path / "typewriter.img")
    for file in SHIPPED.iterdir():
        assert_file(image, f"{PERSONAS}/default/{file.name}", 0o644, file.read_bytes())
    carried = f"{SYSTEM_MODELS}/{smollm2_base.name}"
    assert_file(image, carried, 0o644)
    assert hashlib.sha256(image.read(carried)).hexdigest() == BASES["smollm2-135m"].sha256
    assert image.stat(str(SYSTEM_MODELS))["mode"] == 0o755


@pytest.mark.parametrize("case, expect", [
    ("base not fetched", "run `typewriter model fetch smollm2-135m`"),
    ("another base file", "the adapter was trained on"),
    ("base by path", "which the Pi would not have"),
])
def test_an_adapter_persona_without_its_base_is_refused(tmp_path, ssh_key, monkeypatch, case,
                                                        expect):
    from appliance.engine.bases import BASES

    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    if case == "another base file":
        models = cache / "typewriter" / "models"
        models.mkdir(parents=True)
        (models / BASES["smollm2-135m"].filename).write_bytes(b"GGUF" + bytes(64))
    persona = tmp_path / "juliet"
    shutil.copytree(SHIPPED, persona)
    if case == "base by path":
        toml = persona / "persona.toml"
        toml.write_text(toml.read_text().replace('base = "smollm2-135m"',
                                                 f'base = "{tmp_path / "mine.gguf"}"'))
        seal(persona)
    base = make_base(tmp_path / "base.img", "trixie")
    listing = sorted(p.name for p in tmp_path.iterdir())
    done = build(tmp_path, base, "--ssh-key", str(ssh_key), "--persona", str(persona),
                 "--no-wheels")
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("typewriter:")]
    assert len(errors) == 1 and expect in errors[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
