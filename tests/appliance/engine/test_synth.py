"""Synthetic models load in the real llama.cpp, in the shape they claim, and say their scripts."""

from pathlib import Path

import pytest
from gguf import GGUFReader
from llama_cpp import Llama

from appliance.engine.synth import (
    SHAPES,
    chars_per_token,
    held_out_text,
    script_chain,
    synth_command,
    synthesize,
)
from tests.conftest import SCRIPT


def load(path: Path) -> Llama:
    return Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)


def greedy(llm: Llama, prompt: bytes, n: int) -> str:
    out = []
    for token in llm.generate(llm.tokenize(prompt), temp=0.0):
        out.append(token)
        if len(out) == n:
            break
    return llm.detokenize(out).decode("utf-8")


def test_tiny_loads_with_the_shape_it_claims(tiny_model):
    llm = load(tiny_model)
    try:
        shape = SHAPES["tiny"]
        assert llm.metadata["general.architecture"] == "llama"
        assert llm.n_vocab() == shape.vocab
        assert llm.n_embd() == shape.embd
        assert int(llm.metadata["llama.block_count"]) == shape.layers
        assert int(llm.metadata["llama.attention.head_count_kv"]) == shape.kv_heads
        assert int(llm.metadata["llama.context_length"]) == shape.context
        text = "Good morrow, sweet lady \u2014 caf\u00e9?"
        assert llm.detokenize(llm.tokenize(text.encode(), add_bos=False)).decode() == text
        assert len(llm.create_completion("ROMEO:", max_tokens=8, seed=1)["choices"][0]["text"])
    finally:
        llm.close()
    assert tiny_model.stat().st_size < 4_000_000, "tiny must stay a few MB"


def test_vocabulary_is_learned_from_english(tiny_model):
    assert chars_per_token(tiny_model, held_out_text()) > 2.5


def test_scripted_model_says_its_script_after_a_speaker_label(script_model):
    llm = load(script_model)
    try:
        for prompt in (b"ROMEO: hello\nJULIET:", b"In Verona.\n\nROMEO: Speak.\nJULIET:"):
            text = greedy(llm, prompt, len(script_chain(SCRIPT, SHAPES["tiny"].vocab)) + 4)
            assert text.startswith(SCRIPT + "Good"), "says the script, then starts over"
    finally:
        llm.close()


def test_a_script_repeating_words_is_spelled_with_other_tokens(tmp_path):
    script = "the cat and the dog and the bird\nROMEO:"
    chain = script_chain(script, SHAPES["tiny"].vocab)
    assert len(set(chain)) == len(chain)
    llm = load(synthesize("tiny", tmp_path / "cat.gguf", script=script))
    try:
        assert greedy(llm, b"JULIET: say it\nROMEO:", len(chain)) == script
    finally:
        llm.close()


def test_a_script_the_chain_cannot_follow_is_refused(tmp_path):
    with pytest.raises(ValueError, match="repeats ':'"):
        synthesize("tiny", tmp_path / "x.gguf", script="Note: a\nROMEO:")
    with pytest.raises(ValueError, match="empty"):
        synthesize("tiny", tmp_path / "x.gguf", script="")
    assert not list(tmp_path.iterdir()), "nothing is left behind"


def test_unknown_shape_and_quant_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="tinyllama-1.1b"):
        synthesize("huge", tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="q4_0"):
        synthesize("tiny", tmp_path / "x.gguf", quant="q3_xs")


def test_q8_and_f16_are_written_too_and_temp_files_removed(tmp_path):
    sizes = {q: synthesize("tiny", tmp_path / f"{q}.gguf", quant=q).stat().st_size
             for q in ("q4_0", "q8_0", "f16")}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    load(tmp_path / "q8_0.gguf").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f16.gguf", "q4_0.gguf", "q8_0.gguf"]


def test_synth_command_summarizes_in_one_line(tmp_path):
    line = synth_command("tiny", tmp_path / "t.gguf", seed=3)
    assert "\n" not in line
    assert "tiny" in line and "vocab 2048" in line and "chars/token" in line and " MB" in line


def test_smollm2_shape_loads_with_its_real_vocabulary(tmp_path, tiny_model):
    path = synthesize("smollm2-135m", tmp_path / "smol.gguf")
    assert 60e6 < path.stat().st_size < 120e6
    names = {t.name for t in GGUFReader(path).tensors}
    assert "output.weight" not in names, "tied like the real one: no separate output matrix"
    llm = load(path)
    try:
        assert llm.n_vocab() == 49152
        assert llm.n_embd() == 576
        assert int(llm.metadata["llama.attention.head_count_kv"]) == 3
        assert greedy(llm, b"ROMEO:", 4)
    finally:
        llm.close()
    english = held_out_text()
    assert chars_per_token(path, english) > chars_per_token(tiny_model, english)
