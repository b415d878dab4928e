import subprocess

import pytest

from appliance.persona.bundle import SUMS, BundleError, seal, verify


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "persona.toml").write_text('name = "X"\n')
    (folder / "model.gguf").write_bytes(b"GGUF" + bytes(100))
    seal(folder)
    return folder


def test_sealed_bundle_verifies_and_sha256sum_agrees(bundle):
    verify(bundle)
    done = subprocess.run(["sha256sum", "-c", SUMS], cwd=bundle, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_changed_byte_is_named(bundle):
    data = bytearray((bundle / "model.gguf").read_bytes())
    data[50] ^= 1
    (bundle / "model.gguf").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.gguf: checksum does not match"):
        verify(bundle)


def test_missing_and_extra_files_are_named(bundle):
    (bundle / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="extra.bin: not listed"):
        verify(bundle)
    (bundle / "extra.bin").unlink()
    (bundle / "persona.toml").unlink()
    with pytest.raises(BundleError, match="persona.toml: listed .* but missing"):
        verify(bundle)


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", ".hidden", "a/b"])
def test_names_that_leave_the_bundle_are_refused(bundle, name):
    (bundle / SUMS).write_text(f"{'0' * 64}  {name}\n")
    with pytest.raises(BundleError, match="not a plain file name"):
        verify(bundle)


def test_unsealed_bundle_says_how_to_seal(tmp_path):
    with pytest.raises(BundleError, match="missing; seal the bundle"):
        verify(tmp_path)


def test_seal_refuses_folders_and_links(bundle):
    (bundle / "sub").mkdir()
    with pytest.raises(BundleError, match="only plain files"):
        seal(bundle)
