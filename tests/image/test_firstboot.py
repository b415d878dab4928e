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
    for folder in ("/opt", "/var/lib"):
        (tree / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
        run("debugfs", "-R", f"rdump {folder}/typewriter {tree / folder.lstrip('/')}", root)
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
