"""LoRA adapters on the real SmolLM2 base: the exported adapter computes in llama.cpp what
transformers + peft compute, and the engine swaps adapters on its own worker."""

import time
from pathlib import Path

import numpy as np
import pytest

from appliance.engine.worker import Engine, EngineError, Sampling

pytestmark = pytest.mark.slow

TEXT = "Juliet speaks with a visitor.\n\nVISITOR: Good morrow, lady. Who art thou?\nJULIET:"


@pytest.fixture(scope="module")
def peft_model(smollm2_base):
    """The base in transformers with a random (untrained) LoRA on q and k, where the row
    permutation matters; B large enough that its effect stands well above the logit noise
    of llama.cpp's quantized activations (about 0.2)."""
    import torch

    from appliance.persona.build.train import Recipe, add_lora, load_gguf_base

    model = add_lora(load_gguf_base(smollm2_base),
                     Recipe(base="smollm2-135m", lora_rank=8,
                            lora_targets=("q_proj", "k_proj")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: the adapter would change nothing
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def cpp_logits(base: Path, tokens, adapter=None) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(base), n_ctx=256, logits_all=True, verbose=False, seed=0,
                lora_path=str(adapter) if adapter else None)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[:len(tokens)])
    finally:
        llm.close()


def hf_logits(model, tokens, adapter: bool) -> np.ndarray:
    import contextlib

    import torch

    with torch.no_grad(), (contextlib.nullcontext() if adapter else model.disable_adapter()):
        return model(input_ids=torch.tensor([tokens])).logits[0].float().numpy()


def adapter_effect(smollm2_base, peft_model, path: Path, tokens):
    """What the adapter changes in each library's logits, flattened, and the greedy tokens."""
    hf = hf_logits(peft_model, tokens, True) - hf_logits(peft_model, tokens, False)
    with_adapter = cpp_logits(smollm2_base, tokens, path)
    cpp = with_adapter - cpp_logits(smollm2_base, tokens)
    return hf.ravel(), cpp.ravel(), hf_logits(peft_model, tokens, True).argmax(-1), \
        with_adapter.argmax(-1)


@pytest.fixture(scope="module")
def tokens(smollm2_base):
    from appliance.persona.build.train import llama_tokenizer

    return llama_tokenizer(smollm2_base)(TEXT, True)


def test_the_exported_adapter_agrees_with_peft_and_not_without_the_permutation(
        smollm2_base, peft_model, tokens, tmp_path, monkeypatch):
    """What the adapter changes in the logits (with minus without it, at every position)
    correlates > 0.97 between llama.cpp and transformers + peft, and is as large (within
    15%). The logits themselves are compared through that difference: the Q4_1 base runs
    on quantized activations in llama.cpp, 0.2 apart from transformers' on average.
    Measured: 0.989 and 1.78 vs 1.72. Without the Q/K row permutation: 0.31, 1.78 vs 0.99."""
    from appliance.persona.build import adapter

    good = tmp_path / "good.gguf"
    assert adapter.write_adapter(peft_model, good, alpha=16) == 2 * 30
    hf, cpp, hf_top, cpp_top = adapter_effect(smollm2_base, peft_model, good, tokens)
    assert np.abs(hf).mean() > 1.0  # the random adapter changes the logits a lot
    assert np.corrcoef(hf, cpp)[0, 1] > 0.97
    assert abs(np.abs(cpp).mean() / np.abs(hf).mean() - 1) < 0.15
    assert (hf_top == cpp_top).mean() >= 0.75

    monkeypatch.setattr(adapter, "permute", lambda w, heads: w)
    bad = tmp_path / "unpermuted.gguf"
    adapter.write_adapter(peft_model, bad, alpha=16)
    hf, cpp, _, _ = adapter_effect(smollm2_base, peft_model, bad, tokens)
    assert np.corrcoef(hf, cpp)[0, 1] < 0.6


def test_the_adapter_file_is_an_f16_lora_gguf(peft_model, tmp_path):
    from appliance.engine.gguf_header import read_header
    from appliance.persona.build.adapter import write_adapter

    write_adapter(peft_model, tmp_path / "a.gguf", alpha=16)
    header = read_header(tmp_path / "a.gguf")
    assert header.metadata["general.type"] == "adapter"
    assert header.metadata["adapter.type"] == "lora"
    assert header.metadata["adapter.lora.alpha"] == 16
    names = {t.name for t in header.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.29.attn_k.weight.lora_b"} <= names
    assert {t.ggml_type for t in header.tensors} == {1}  # GGML_TYPE_F16


def test_use_adapter_swaps_on_the_worker_and_forgets_the_cache(smollm2_base, peft_model,
                                                               tmp_path):
    from appliance.persona.build.adapter import write_adapter

    path = tmp_path / "a.gguf"
    write_adapter(peft_model, path, alpha=16)
    greedy = Sampling(max_tokens=12, temperature=0.0)
    engine = Engine(smollm2_base, n_ctx=256, seed=0, adapter=path).start()
    try:
        assert engine.adapter_path == path
        assert len(engine.base_sha256) == 64
        adapted = engine.generate(TEXT, ["\n"], greedy).text()
        assert engine.context_tokens > 0
        started = time.perf_counter()
        engine.use_adapter(None)
        swap = time.perf_counter() - started
        assert engine.context_tokens == 0 and engine.adapter_path is None
        bare = engine.generate(TEXT, ["\n"], greedy).text()
        engine.use_adapter(path)
        assert engine.generate(TEXT, ["\n"], greedy).text() == adapted
        with pytest.raises(EngineError, match="does not exist"):
            engine.use_adapter(tmp_path / "missing.gguf")
        assert engine.generate(TEXT, ["\n"], greedy).text() == adapted  # the old one stays
    finally:
        engine.close()
    plain = Engine(smollm2_base, n_ctx=256, seed=0).start()
    try:
        assert plain.generate(TEXT, ["\n"], greedy).text() == bare != adapted
    finally:
        plain.close()
    assert swap < 1.0
