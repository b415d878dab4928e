import os
import subprocess
import sys

import pytest

from appliance.persona.bundle import seal
from appliance.persona.store import PersonaStore, StoreError


def bundle(folder, text="a"):
    folder.mkdir(parents=True)
    (folder / "persona.toml").write_text(f'name = "{text}"\n')
    (folder / "model.gguf").write_bytes(b"GGUF" + text.encode())
    seal(folder)
    return folder


def test_install_use_and_rollback(tmp_path):
    store = PersonaStore(tmp_path / "store")
    assert store.names() == [] and store.active is None
    for name in ("alpha", "beta"):
        with store.staging() as staged:
            bundle(staged / "b", name)
            store.install(staged / "b", name)
    assert store.names() == ["alpha", "beta"]
    store.set_active("alpha")
    store.set_active("beta")
    assert (store.active, store.previous) == ("beta", "alpha")
    assert store.rollback_target() == "alpha"
    with pytest.raises(StoreError, match="active persona"):
        store.remove("beta")
    store.remove("alpha")
    assert store.names() == ["beta"] and store.previous is None
    with pytest.raises(StoreError, match="no previous persona"):
        store.rollback_target()


def test_reinstall_replaces_and_same_detects_unchanged(tmp_path):
    store = PersonaStore(tmp_path)
    with store.staging() as staged:
        store.install(bundle(staged / "b", "one"), "p")
    sums = (store.path("p") / "SHA256SUMS").read_text()
    assert store.same("p", sums)
    with store.staging() as staged:
        store.install(bundle(staged / "b", "two"), "p")
    assert not store.same("p", sums)
    assert (store.path("p") / "model.gguf").read_bytes() == b"GGUFtwo"
    assert list((tmp_path / ".staging").iterdir()) == []


def test_bad_names_and_unknown_personas(tmp_path):
    store = PersonaStore(tmp_path)
    for bad in ("../x", "Upper", ".hidden", "a/b", ""):
        with pytest.raises(StoreError, match="not a persona name"):
            store.path(bad)
    with pytest.raises(StoreError, match="no persona 'nope' is installed"):
        store.set_active("nope")


def test_an_unverified_bundle_is_not_installed(tmp_path):
    store = PersonaStore(tmp_path)
    with store.staging() as staged:
        b = bundle(staged / "b")
        (b / "model.gguf").write_bytes(b"changed")
        with pytest.raises(StoreError, match="checksum does not match"):
            store.install(b, "p")
    assert store.names() == []


def test_sweep_removes_abandoned_uploads_and_keeps_live_ones(tmp_path):
    store = PersonaStore(tmp_path)
    area = tmp_path / ".staging"
    area.mkdir()
    (area / "upload-dead").mkdir()
    (area / "upload-dead.lock").write_text("")
    (area / "upload-live").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(area / 'upload-live.lock')!r}, 'w')\n"
        "fcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(30)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        store.sweep()
        assert sorted(os.listdir(area)) == ["upload-live", "upload-live.lock"]
    finally:
        holder.kill()
        holder.wait()
    store.sweep()
    assert os.listdir(area) == []
