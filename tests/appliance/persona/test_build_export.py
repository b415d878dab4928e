"""Our GGUF export against transformers, and training that resumes where it stopped."""

from pathlib import Path

import numpy as np
import pytest

from appliance.engine.synth import quiet_llama
from appliance.persona.build import BuildError
from appliance.persona.build.export import write_f16
from appliance.persona.build.train import (
    Recipe,
    Stage,
    progress_bar,
    stream_batch,
    train_tokenizer,
)

ENGLISH = Path(__file__).parents[3] / "appliance" / "data" / "english.txt"
# Logits here spread with a std of ~0.9; float16 weights moved them by at most 0.0055 (measured).
TOLERANCE = 0.02  # largest absolute logit difference allowed, at any position and token


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(ENGLISH.read_text(encoding="utf-8")[:60_000], 512)


def llama(tokenizer, kv_heads: int, seed: int = 0):
    """A random LLaMA with grouped-query attention and weights large enough for peaked logits."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=kv_heads, max_position_embeddings=512,
                         rms_norm_eps=1e-5, initializer_range=0.08, tie_word_embeddings=False,
                         bos_token_id=tokenizer.token_to_id("<s>"),
                         eos_token_id=tokenizer.token_to_id("</s>"))
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_f16_gguf_logits_in_llama_cpp_match_transformers(tmp_path, tokenizer, kv_heads):
    import torch
    from llama_cpp import Llama

    model = llama(tokenizer, kv_heads)
    path = tmp_path / "model-f16.gguf"
    write_f16(model, tokenizer, path)
    ids = [tokenizer.token_to_id("<s>")] + tokenizer.encode(
        "JULIET: O Romeo, Romeo! wherefore art thou Romeo?\nROMEO: Here.\n").ids
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    with quiet_llama():
        llm = Llama(model_path=str(path), n_ctx=128, n_batch=128, logits_all=True,
                    verbose=False)
    try:
        assert llm.tokenize(b"O Romeo, wherefore", add_bos=False) == tokenizer.encode(
            "O Romeo, wherefore").ids  # llama.cpp reads the same vocabulary and merges
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    assert expected.std() > 0.5  # the logits are not flat: the comparison means something
    assert np.abs(got - expected).max() < TOLERANCE
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_the_permutation_matters(tmp_path, tokenizer):
    """Without the Q/K row permutation llama.cpp computes something else: the test can fail."""
    import torch
    from llama_cpp import Llama

    from appliance.persona.build import export

    model = llama(tokenizer, 4)
    original = export.permute
    export.permute = lambda w, heads: w
    try:
        write_f16(model, tokenizer, tmp_path / "unpermuted.gguf")
    finally:
        export.permute = original
    ids = [tokenizer.token_to_id("<s>")] + tokenizer.encode("ROMEO: Good night, good night!").ids
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    with quiet_llama():
        llm = Llama(model_path=str(tmp_path / "unpermuted.gguf"), n_ctx=128, n_batch=128,
                    logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    assert np.abs(got - expected).max() > TOLERANCE * 10


def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path, tokenizer):
    import torch

    recipe = Recipe(vocab=512, embd=64, layers=1, heads=1, ff=128, window=32, batch=4, seed=3)
    ids = torch.tensor(tokenizer.encode(ENGLISH.read_text(encoding="utf-8")[:20_000]).ids)

    def stage(work: Path, model, stop_at: int = -1) -> Stage:
        def batch(step: int):
            if step == stop_at:
                raise KeyboardInterrupt
            return stream_batch(ids, recipe, step)
        return Stage("pretrain", model, 6, 1e-2, work, batch, save_every=2)

    from appliance.persona.build.train import new_model

    straight = new_model(recipe, tokenizer)
    (tmp_path / "a").mkdir()
    stage(tmp_path / "a", straight).run(progress_bar(disable=True))

    (tmp_path / "b").mkdir()
    with pytest.raises(BuildError, match="interrupted at pretrain step 3 of 6; run the same"):
        quiet = progress_bar(disable=True)
        stage(tmp_path / "b", new_model(recipe, tokenizer), stop_at=3).run(quiet)
    resumed = new_model(recipe, tokenizer)  # a fresh process: new weights, then the checkpoint
    stage(tmp_path / "b", resumed).run(progress_bar(disable=True))
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
