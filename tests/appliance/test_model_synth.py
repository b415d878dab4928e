"""Synthetic models load in the real llama.cpp, in the shape they claim."""

import pytest
from llama_cpp import Llama

from appliance.model_synth import CORPUS, SHAPES, chars_per_token, synthesize


def load(path, **kw):
    return Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False, **kw)


def test_tiny_loads_with_the_shape_it_claims(tiny_model):
    llm = load(tiny_model)
    try:
        meta = llm.metadata
        assert meta["general.architecture"] == "llama"
        assert int(meta["llama.embedding_length"]) == SHAPES["tiny"].embd
        assert int(meta["llama.block_count"]) == SHAPES["tiny"].layers
        assert llm.n_vocab() == SHAPES["tiny"].vocab
        assert llm.detokenize(llm.tokenize(b"Good morrow, sweet lady.", add_bos=False)) == (
            b"Good morrow, sweet lady."
        )
    finally:
        llm.close()
    assert tiny_model.stat().st_size < 6_000_000, "tiny must stay a few MB"


def test_vocabulary_is_learned_from_english():
    tail = CORPUS.read_text()[-20000:]
    assert chars_per_token(2048, tail) > 2.5
    assert chars_per_token(32000, tail) > chars_per_token(2048, tail)


def test_scripted_model_says_its_script(script_model):
    from tests.conftest import SCRIPT

    llm = load(script_model)
    try:
        tokens = llm.tokenize(b"In Verona.\n\nROMEO: Speak.\nJULIET:")
        out = []
        for token in llm.generate(tokens, temp=0.0):
            out.append(token)
            if len(out) == 60:
                break
        text = llm.detokenize(out).decode("utf-8", errors="replace")
        assert text.startswith(SCRIPT), text
    finally:
        llm.close()


def test_a_script_the_chain_cannot_follow_is_refused(tmp_path):
    with pytest.raises(ValueError, match="repeats the token"):
        synthesize("tiny", tmp_path / "x.gguf", script="I saw a cat and a dog")


def test_unknown_shape_and_quant_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="tinyllama-1.1b"):
        synthesize("huge", tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="q4_0"):
        synthesize("tiny", tmp_path / "x.gguf", quant="q3_xs")


def test_q8_and_f16_are_written_too(tmp_path):
    sizes = {q: synthesize("tiny", tmp_path / f"{q}.gguf", quant=q).stat().st_size
             for q in ("q4_0", "q8_0", "f16")}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    load(tmp_path / "q8_0.gguf").close()


@pytest.mark.slow
def test_smollm2_shape_loads(tmp_path):
    path = synthesize("smollm2-135m", tmp_path / "smol.gguf")
    llm = load(path)
    try:
        assert llm.n_vocab() == 49152
        assert int(llm.metadata["llama.embedding_length"]) == 576
    finally:
        llm.close()
