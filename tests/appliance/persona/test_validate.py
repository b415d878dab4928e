"""A bundle is accepted only when every check passes; each rejection names its cause."""

import shutil
import struct

import numpy as np
import pytest
from gguf import GGUFWriter

from appliance.engine.gguf_header import HeaderError, read_header
from appliance.persona.bundle import SUMS, seal
from appliance.persona.validate import Limits, validate
from tests.conftest import typewriter

PLENTY = Limits(memory=8 << 30, n_ctx=512, seconds=60)


def make_bundle(folder, model_bytes=None, model=None, toml_extra=""):
    folder.mkdir(parents=True)
    if model is not None:
        shutil.copy(model, folder / "model.gguf")
    else:
        (folder / "model.gguf").write_bytes(model_bytes)
    (folder / "persona.toml").write_text(
        'name = "Juliet"\nmodel = "model.gguf"\n[frame]\nuser_label = "ROMEO"\n'
        'character_label = "JULIET"\n' + toml_extra)
    seal(folder)
    return folder


def header_only(path, arch="llama", **metadata):
    """A GGUF whose header is well formed (the checks before loading look only at that)."""
    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_head_count(1)
    for key, value in metadata.items():
        w.add_string(key, value)
    w.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def test_a_good_bundle_is_accepted_and_generates(tmp_path, tiny_model):
    verdict = validate(make_bundle(tmp_path / "b", model=tiny_model), PLENTY)
    assert verdict.ok, verdict.table()
    assert [c.name for c in verdict.checks] == ["sandbox", "checksums", "persona", "header",
                                                "architecture", "memory", "template",
                                                "loads", "generates"]


def test_truncated_model_is_rejected_before_loading(tmp_path, tiny_model):
    data = tiny_model.read_bytes()
    verdict = validate(make_bundle(tmp_path / "b", data[: len(data) // 2]), PLENTY)
    assert not verdict.ok
    assert verdict.reason.startswith("header:") and "truncated" in verdict.reason
    assert "loads" not in [c.name for c in verdict.checks]


def test_wrong_magic(tmp_path):
    verdict = validate(make_bundle(tmp_path / "b", b"GGML" + bytes(64)), PLENTY)
    assert "is not a GGUF model" in verdict.reason


@pytest.mark.parametrize("counts, what", [((1 << 40, 1), "tensors"),
                                          ((1, 1 << 62), "metadata entries")])
def test_absurd_counts(tmp_path, counts, what):
    data = b"GGUF" + struct.pack("<IQQ", 3, *counts) + bytes(64)
    verdict = validate(make_bundle(tmp_path / "b", data), PLENTY)
    assert f"{what} (at most" in verdict.reason


def test_absurd_string_length(tmp_path):
    data = b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 60) + bytes(64)
    with pytest.raises(HeaderError, match="bytes in a string"):
        (tmp_path / "m.gguf").write_bytes(data)
        read_header(tmp_path / "m.gguf")


def test_wrong_architecture(tmp_path):
    verdict = validate(make_bundle(tmp_path / "b", header_only(tmp_path / "m.gguf", "bert")),
                       PLENTY)
    assert verdict.reason.startswith("architecture: 'bert' is not")


def test_model_larger_than_available_memory(tmp_path, tiny_model):
    verdict = validate(make_bundle(tmp_path / "b", model=tiny_model),
                       Limits(memory=16 << 20, n_ctx=2048))
    assert verdict.reason.startswith("memory: needs ~")
    assert "the board has 16 MiB" in verdict.reason


def test_template_escaping_the_sandbox(tmp_path):
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}{{ messages[0]['content'] }}"
    data = header_only(tmp_path / "m.gguf", **{"tokenizer.chat_template": evil})
    verdict = validate(make_bundle(tmp_path / "b", data), PLENTY)
    assert verdict.reason.startswith("template:") and "unsafe" in verdict.reason


def test_checksum_mismatch(tmp_path, tiny_model):
    bundle = make_bundle(tmp_path / "b", model=tiny_model)
    with open(bundle / "model.gguf", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    verdict = validate(bundle, PLENTY)
    assert verdict.reason.startswith("checksums:") and "model.gguf" in verdict.reason


def test_path_traversal_in_checksums(tmp_path, tiny_model):
    bundle = make_bundle(tmp_path / "b", model=tiny_model)
    (bundle / SUMS).write_text(f"{'0' * 64}  ../../etc/passwd\n")
    verdict = validate(bundle, PLENTY)
    assert "not a plain file name" in verdict.reason


def test_model_outside_the_bundle_is_refused(tmp_path, tiny_model):
    bundle = make_bundle(tmp_path / "b", model=tiny_model)
    toml = (bundle / "persona.toml").read_text().replace('"model.gguf"', f'"{tiny_model}"')
    (bundle / "persona.toml").write_text(toml)
    seal(bundle)
    verdict = validate(bundle, PLENTY)
    assert verdict.reason.startswith("persona:") and "outside the bundle" in verdict.reason


def test_a_validator_that_runs_out_of_time_is_a_rejection(tmp_path, tiny_model):
    verdict = validate(make_bundle(tmp_path / "b", model=tiny_model),
                       Limits(memory=8 << 30, n_ctx=512, seconds=0.05))
    assert not verdict.ok and verdict.reason.startswith("time:")


def test_cli_validate_exit_status(tmp_path, tiny_model):
    good = typewriter("persona", "validate", str(make_bundle(tmp_path / "g", model=tiny_model)))
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.strip().endswith("accepted")
    bad = typewriter("persona", "validate", str(make_bundle(tmp_path / "x", b"nope")))
    assert bad.returncode == 1
    assert "rejected: persona:" in bad.stdout and "not a GGUF model" in bad.stdout


@pytest.mark.slow
def test_an_adapter_persona_is_validated_against_its_base(tmp_path, tiny_adapters):
    from tests.conftest import adapter_bundle

    base, (adapter, _) = tiny_adapters
    verdict = validate(adapter_bundle(tmp_path / "good", base, adapter, "Juliet"), PLENTY)
    assert verdict.ok, verdict.table()
    assert [c.name for c in verdict.checks] == ["sandbox", "checksums", "persona", "base",
                                                "header", "architecture", "adapter", "memory",
                                                "template", "loads", "generates"]
    # A whole model where the adapter should be: refused by its header, before loading.
    verdict = validate(adapter_bundle(tmp_path / "model", base, base, "Juliet"), PLENTY)
    assert verdict.reason.startswith("adapter: adapter.gguf: general.type None")
    assert "not a LoRA adapter" in verdict.reason
    # The base changed since the adapter was trained on it.
    other = tmp_path / "other.gguf"
    shutil.copy(base, other)
    bundle = adapter_bundle(tmp_path / "moved", other, adapter, "Juliet")
    with open(other, "ab") as f:
        f.write(b"\0" * 32)
    verdict = validate(bundle, PLENTY)
    assert verdict.reason.startswith("base: ") and "rebuild the persona" in verdict.reason
