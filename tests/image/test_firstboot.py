"""The first-boot installer from a built image, run with no network, installs from the wheels alone.

Host tree (this machine's wheels) always; an arm64 Debian tree under
`proot -q qemu-aarch64-static` with the cross-built wheelhouse when those tools
and the Debian mirror are there. Both are slow (`pytest -m slow`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from image import installer
from tests.conftest import typewriter
from tests.image.conftest import make_base, partition_table, run

pytestmark = pytest.mark.slow


def offline() -> list:
    """A prefix that runs a command in a new network namespace: no network at all."""
    prefix = ["unshare", "-n"] + (["-r"] if os.geteuid() else [])
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot cut the network off here ({' '.join(prefix)}: "
                    f"{probe.stderr.strip()}); enable unprivileged user namespaces")
    return prefix


def image_tree(tmp_path: Path, bundle: Path, ssh_key: Path, tree: Path, *wheels: str) -> None:
    """Build an image and copy what the installer touches out of it into `tree`."""
    base = make_base(tmp_path / "base.img", "bookworm")
    out = tmp_path / "t.img"
    done = typewriter("image", "build", "--base", str(base), "--out", str(out), "--ssh-key",
                      str(ssh_key), "--persona", str(bundle), *wheels, timeout=600)
    assert done.returncode == 0, done.stderr
    root = f"{out}?offset={partition_table(out)[1]['start'] * 512}"
    for folder in ("/opt/typewriter", "/var/lib/typewriter", "/etc/typewriter",
                   "/usr/lib/sysusers.d"):
        parent = tree / os.path.dirname(folder).lstrip("/")
        parent.mkdir(parents=True, exist_ok=True)
        run("debugfs", "-R", f"rdump {folder} {parent}", root)
    script = tree / installer.SCRIPT_PATH.lstrip("/")
    script.parent.mkdir(parents=True, exist_ok=True)
    run("debugfs", "-R", f"dump -p {installer.SCRIPT_PATH} {script}", root)
    assert os.access(script, os.X_OK)


def test_installs_offline_into_a_fresh_tree_and_runs(tmp_path, bundle, ssh_key,
                                                     host_wheelhouse):
    tree = tmp_path / "tree"
    image_tree(tmp_path, bundle, ssh_key, tree, "--no-wheels")
    wheels = tree / installer.WHEELS.lstrip("/")
    for wheel in host_wheelhouse.iterdir():
        shutil.copy(wheel, wheels)
    env = dict(os.environ, ROOT=str(tree), PYTHON=sys.executable, PIP_CONFIG_FILE=os.devnull)
    done = subprocess.run([*offline(), str(tree / installer.SCRIPT_PATH.lstrip("/"))],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    venv = tree / installer.VENV.lstrip("/")
    version = subprocess.run([venv / "bin/typewriter", "--version"], capture_output=True,
                             text=True, check=True)
    assert version.stdout.startswith("typewriter 0.")
    model = tree / "var/lib/typewriter/personas/juliet/model.gguf"
    loaded = subprocess.run([venv / "bin/python", "-c", (
        "import sys; from llama_cpp import Llama; "
        "m = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False); print(m.n_vocab())"),
        str(model)], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and int(loaded.stdout) > 0, loaded.stderr


ARM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def emulated(tree: Path) -> list:
    """Run a command inside the arm64 tree: proot fakes root and the chroot, qemu the CPU."""
    return ["proot", "-0", "-q", "qemu-aarch64-static", "-r", str(tree), "-w", "/"]


@pytest.fixture(scope="session")
def arm64_tree(tmp_path_factory) -> Path:
    """A fresh arm64 Debian Bookworm (minbase + python3) as debootstrap's first stage
    fetches and unpacks it: enough to run Python and install wheels (~40 s; its configure
    stage under emulation would take ten minutes more and change nothing here)."""
    for tool in ("debootstrap", "proot", "qemu-aarch64-static"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"{tool} not installed: apt-get install debootstrap proot "
                        "qemu-user-static")
    tree = tmp_path_factory.mktemp("arm64") / "root"
    mirror = os.environ.get("TYPEWRITER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    fake_root = []
    if os.geteuid() != 0:  # debootstrap wants root; fakeroot also fakes its mknod calls
        if not shutil.which("fakeroot"):
            pytest.skip("debootstrap needs root or fakeroot: apt-get install fakeroot")
        fake_root = ["fakeroot"]
    done = subprocess.run([*fake_root, shutil.which("debootstrap") or "/usr/sbin/debootstrap",
                           "--arch=arm64", "--foreign", "--variant=minbase",
                           "--include=python3", "bookworm", str(tree), mirror],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # The first stage unpacks only the essential packages; unpack the rest it fetched too.
    for deb in sorted((tree / "var/cache/apt/archives").glob("*.deb")):
        run("dpkg-deb", "-x", str(deb), str(tree))
    assert (tree / "usr/bin/python3").exists()
    return tree


def test_arm64_tree_installs_the_cross_built_wheels_offline_and_loads_a_model(
        tmp_path, bundle, ssh_key, arm64_tree, aarch64_wheelhouse):
    tree = arm64_tree
    image_tree(tmp_path, bundle, ssh_key, tree, "--wheelhouse", str(aarch64_wheelhouse),
               "--persona-key", str(ssh_key))
    wheels = sorted(p.name for p in (tree / installer.WHEELS.lstrip("/")).iterdir())
    assert "llama_cpp_python-0.3.36-py3-none-linux_aarch64.whl" in wheels
    # The README's promises: the panel's GPIO (gpiozero, lgpio for aarch64) ...
    assert any(w.startswith("gpiozero-") for w in wheels), wheels
    assert any(w.startswith("lgpio-") and w.endswith("_aarch64.whl") for w in wheels), wheels
    # ... and speech: espeak-ng and alsa-utils as arm64 .debs, with the index's SHA-256
    debs = tree / installer.DEBS.lstrip("/")
    names = sorted(p.name for p in debs.glob("*.deb"))
    assert any(n.startswith("espeak-ng_") and n.endswith("_arm64.deb") for n in names), names
    assert any(n.startswith("alsa-utils_") for n in names), names
    run("sha256sum", "--quiet", "-c", "SHA256SUMS", cwd=debs)
    # What systemd-sysusers does early on first boot, from the image's sysusers.d entry.
    if shutil.which("systemd-sysusers"):
        run("systemd-sysusers", f"--root={tree}")
    done = subprocess.run([*offline(), *emulated(tree), installer.SCRIPT_PATH],
                          capture_output=True, text=True, env=ARM_ENV, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    version = subprocess.run([*emulated(tree), f"{installer.VENV}/bin/typewriter", "--version"],
                             capture_output=True, text=True, env=ARM_ENV, timeout=300)
    assert version.returncode == 0 and version.stdout.startswith("typewriter 0."), version.stderr
    if shutil.which("systemd-sysusers"):  # the persona upload key, restricted to receive
        (line,) = (tree / "var/lib/typewriter/.ssh/authorized_keys").read_text().splitlines()
        assert line.startswith("restrict,command=")
        # the venv's typewriter (or, where proot hides it from which(), its python -m)
        assert f'command="{installer.VENV}/bin/' in line
        assert "persona receive --config /etc/typewriter/config.toml" in line
        assert " ".join(ssh_key.read_text().split()[:2]) in line
        mode = (tree / "var/lib/typewriter/.ssh/authorized_keys").stat().st_mode & 0o777
        assert mode == 0o600
    pi = subprocess.run([*emulated(tree), f"{installer.VENV}/bin/python", "-c",
                         "import gpiozero, lgpio; from importlib.metadata import version; "
                         "print(version('gpiozero'))"],
                        capture_output=True, text=True, env=ARM_ENV, timeout=300)
    assert pi.returncode == 0 and pi.stdout.startswith("2."), pi.stderr[-2000:]
    loaded = subprocess.run([*emulated(tree), f"{installer.VENV}/bin/python", "-c", (
        "import platform; from llama_cpp import Llama; "
        "m = Llama(model_path='/var/lib/typewriter/personas/juliet/model.gguf', n_ctx=64, "
        "n_threads=1, verbose=False); print(platform.machine(), m.n_vocab())")],
        capture_output=True, text=True, env=ARM_ENV, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    machine, vocab = loaded.stdout.split()
    assert machine == "aarch64" and int(vocab) > 0
