"""Synthetic Raspberry Pi OS images with the real layout, made rootless like the builder works.

MBR table (sfdisk on the file), a FAT32 `bootfs` (mkfs.vfat + mtools) with config.txt
and cmdline.txt as Raspberry Pi OS ships them, an ext4 `rootfs` (mkfs.ext4 -d) with
the release's os-release, /etc/rpi-issue and the arm64 library folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional

import pytest

from appliance.persona.bundle import seal
from image.wheelhouse import app_wheel

TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mtype", "mdir", "mkfs.ext4", "debugfs", "e2fsck",
         "resize2fs", "dumpe2fs")
missing = [t for t in TOOLS if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
if missing:
    pytest.skip(f"image tools missing ({', '.join(missing)}): apt-get install fdisk mtools "
                "dosfstools e2fsprogs", allow_module_level=True)

MiB = 1 << 20
BOOT_START, BOOT_SIZE, ROOT_SIZE = 4 * MiB, 40 * MiB, 24 * MiB  # FAT32 under ~33 MiB trips mtools
CONFIG_TXT = """\
# For more options and information see http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
arm_64bit=1

[cm4]
otg_mode=1

[all]
"""
CMDLINE_TXT = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
               "fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n")
OS_RELEASE = {
    "bookworm": ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                 'VERSION_ID="12"\nVERSION="12 (bookworm)"\nVERSION_CODENAME=bookworm\n'
                 'ID=debian\n'),
    "trixie": ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n'
               'VERSION_ID="13"\nVERSION="13 (trixie)"\nVERSION_CODENAME=trixie\nID=debian\n'),
    "bullseye": ('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)"\nVERSION_ID="11"\n'
                 'VERSION_CODENAME=bullseye\nID=debian\n'),
}


def run(*args: str, input: Optional[str] = None, cwd: Optional[Path] = None) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return subprocess.run(args, input=input, capture_output=True, text=True, check=True,
                          env=env, cwd=cwd).stdout


def make_base(path: Path, codename: str = "trixie", rpi: bool = True, arch: str = "aarch64",
              boot_files: Optional[Dict[str, str]] = None) -> Path:
    """A Raspberry Pi OS Lite-shaped image of the given release at `path`."""
    work = path.with_name(path.name + ".parts")
    tree = work / "root"
    for folder in ("etc/systemd/system/multi-user.target.wants", "usr/lib", "usr/bin",
                   f"usr/lib/{arch}-linux-gnu", "var/lib", "opt", "home", "boot/firmware"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    (tree / "usr/lib/os-release").write_text(OS_RELEASE[codename])
    (tree / "etc/os-release").symlink_to("../usr/lib/os-release")
    if rpi:
        (tree / "etc/rpi-issue").write_text("Raspberry Pi reference 2025-10-01\n")
    (tree / "usr/bin/python3").symlink_to("python3.13" if codename == "trixie" else
                                          "python3.11")
    boot_fs, root_fs = work / "boot.fat", work / "root.ext4"
    with open(boot_fs, "wb") as f:
        f.truncate(BOOT_SIZE)
    run("mkfs.vfat", "-F", "32", "-n", "bootfs", str(boot_fs))
    files = {"config.txt": CONFIG_TXT, "cmdline.txt": CMDLINE_TXT, "issue.txt": "rpi\n"}
    files.update(boot_files if boot_files is not None else {})
    for name, text in files.items():
        local = work / name
        local.write_text(text)
        run("mcopy", "-i", str(boot_fs), str(local), f"::/{name}")
    run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(tree), str(root_fs),
        f"{ROOT_SIZE // 1024}K")
    with open(path, "wb") as image:
        image.truncate(BOOT_START + BOOT_SIZE + ROOT_SIZE)
        for offset, part in ((BOOT_START, boot_fs), (BOOT_START + BOOT_SIZE, root_fs)):
            image.seek(offset)
            image.write(part.read_bytes())
    sector = 512
    run("sfdisk", "--no-reread", "--no-tell-kernel", str(path), input=(
        "label: dos\nlabel-id: 0x4e639091\n"
        f"start={BOOT_START // sector}, size={BOOT_SIZE // sector}, type=c\n"
        f"start={(BOOT_START + BOOT_SIZE) // sector}, size={ROOT_SIZE // sector}, type=83\n"))
    shutil.rmtree(work)
    return path


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_model) -> Path:
    """A sealed persona bundle (persona.toml, model.gguf, card.md, SHA256SUMS)."""
    folder = tmp_path_factory.mktemp("bundle") / "juliet"
    folder.mkdir()
    shutil.copy(tiny_model, folder / "model.gguf")
    (folder / "persona.toml").write_text(
        'name = "Juliet"\nmodel = "model.gguf"\n[frame]\nuser_label = "ROMEO"\n'
        'character_label = "JULIET"\npreamble = "A conversation in Verona."\n')
    (folder / "card.md").write_text("# Juliet\nA test persona.\n")
    seal(folder)
    return folder


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory) -> Path:
    key = tmp_path_factory.mktemp("keys") / "maker"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "maker@workshop", "-f", str(key))
    return key.with_suffix(".pub")


def partition_table(image: Path) -> list:
    return json.loads(run("sfdisk", "--json", str(image)))["partitiontable"]["partitions"]


def repack(name: str, out: Path) -> Path:
    """A wheel of an installed distribution, rebuilt from its RECORD (an offline wheelhouse
    for this machine without compiling llama-cpp-python again)."""
    import base64
    import hashlib
    import zipfile
    from importlib import metadata

    dist = metadata.distribution(name)
    site = Path(dist.locate_file(""))
    info = next(str(f).split("/")[0] for f in dist.files if str(f).endswith("dist-info/WHEEL"))
    tags = [line.split(":", 1)[1].strip().split("-") for line in
            (site / info / "WHEEL").read_text().splitlines() if line.startswith("Tag:")]
    tag = "-".join(".".join(sorted({t[i] for t in tags})) for i in range(3))
    stem = info[: -len(".dist-info")]
    target = out / f"{stem}-{tag}.whl"
    skip = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
    record = []
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for entry in dist.files:
            path = str(entry)
            if (path.startswith("..") or path.endswith(".pyc") or
                    (path.startswith(info + "/") and path.split("/")[-1] in skip)):
                continue
            data = (site / path).read_bytes()
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return target


def installed_closure(root: str) -> list:
    """`root` and every distribution it needs here, from the installed metadata."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = [], [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.append(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if not req.marker or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


@pytest.fixture(scope="session")
def host_wheelhouse(tmp_path_factory) -> Path:
    """Every wheel the appliance needs on this machine: its own, and the installed ones."""
    out = tmp_path_factory.mktemp("wheels-host")
    app_wheel(out)  # the same wheel `typewriter image wheelhouse` builds
    for name in installed_closure("llama-cpp-python") + installed_closure("pyserial") + \
            installed_closure("gguf") + installed_closure("gpiozero") + ["pip"]:
        if not list(out.glob(f"{name.replace('-', '_')}-*.whl")):
            repack(name, out)
    return out


@pytest.fixture(scope="session")
def aarch64_wheelhouse(tmp_path_factory) -> Path:
    """`typewriter image wheelhouse --arch aarch64`: llama-cpp-python cross-compiled (minutes)
    unless TYPEWRITER_AARCH64_ENGINE_WHEEL names one built before (a CI cache) or the cache
    folder holds the one an earlier run built (image/llama_cpp_python-*_aarch64.whl)."""
    from appliance.system.paths import cache_dir
    from tests.conftest import typewriter

    if not shutil.which("aarch64-linux-gnu-g++"):
        pytest.skip("no cross compiler: apt-get install gcc-aarch64-linux-gnu "
                    "g++-aarch64-linux-gnu")
    out = tmp_path_factory.mktemp("wheels-aarch64")
    keep = cache_dir() / "image"
    from image.wheelhouse import APP, ENGINE, requirement_of

    version = requirement_of(APP, ENGINE).split("==")[-1]  # the pinned one
    cached = os.environ.get("TYPEWRITER_AARCH64_ENGINE_WHEEL") or next(
        (str(p) for p in keep.glob(f"llama_cpp_python-{version}-*-linux_aarch64.whl")), None)
    done = typewriter("image", "wheelhouse", "--arch", "aarch64", "--python", "3.11",
                      "--out", str(out), *(["--engine-wheel", cached] if cached else []),
                      timeout=1800)
    assert done.returncode == 0, done.stderr
    engine = [p for p in out.glob("llama_cpp_python-*") if p.name.endswith("-linux_aarch64.whl")]
    assert engine
    if not cached:  # the next run skips the compile
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(engine[0], keep / engine[0].name)
    return out
