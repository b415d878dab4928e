"""Our own GGUF export of a transformers LLaMA, then llama.cpp's quantizer.

The tensors are renamed to llama.cpp's names and the Q and K projections'
rows are permuted: transformers applies rotary embeddings to the two halves
of each head, llama.cpp to adjacent pairs (the same permutation as
`LlamaModel.permute` in llama.cpp's converter).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, List

import numpy as np

from appliance.engine.synth import QUANTS, Shape, Tensor, quantize, vocabulary_of, write_llama

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a Q or K projection from transformers' rotary layout to llama.cpp's."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def shape_of(model: LlamaForCausalLM) -> Shape:
    c = model.config
    return Shape(vocab=c.vocab_size, embd=c.hidden_size, layers=c.num_hidden_layers,
                 heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                 ff=c.intermediate_size, context=c.max_position_embeddings,
                 rope_theta=float(getattr(c, "rope_theta", None)
                                  or (c.rope_parameters or {}).get("rope_theta", 10000.0)),
                 tied=bool(c.tie_word_embeddings))


def tensors(model: LlamaForCausalLM) -> List[Tensor]:
    """llama.cpp's tensors in file order, each converted only when written."""
    shape = shape_of(model)
    state = model.state_dict()

    def take(name: str, heads: int = 0):
        def make() -> np.ndarray:
            w = state[name].detach().float().numpy()
            if heads:
                w = permute(w, heads)
            return w.astype(np.float32 if w.ndim == 1 else np.float16)
        return (tuple(state[name].shape), make)

    names = [("token_embd.weight", "model.embed_tokens.weight", 0),
             ("output_norm.weight", "model.norm.weight", 0)]
    if not shape.tied:
        names.append(("output.weight", "lm_head.weight", 0))
    for i in range(shape.layers):
        hf, b = f"model.layers.{i}.", f"blk.{i}."
        names += [(b + "attn_norm.weight", hf + "input_layernorm.weight", 0),
                  (b + "attn_q.weight", hf + "self_attn.q_proj.weight", shape.heads),
                  (b + "attn_k.weight", hf + "self_attn.k_proj.weight", shape.kv_heads),
                  (b + "attn_v.weight", hf + "self_attn.v_proj.weight", 0),
                  (b + "attn_output.weight", hf + "self_attn.o_proj.weight", 0),
                  (b + "ffn_norm.weight", hf + "post_attention_layernorm.weight", 0),
                  (b + "ffn_gate.weight", hf + "mlp.gate_proj.weight", 0),
                  (b + "ffn_up.weight", hf + "mlp.up_proj.weight", 0),
                  (b + "ffn_down.weight", hf + "mlp.down_proj.weight", 0)]
    return [(gguf_name, *take(hf_name, heads)) for gguf_name, hf_name, heads in names]


def write_f16(model: LlamaForCausalLM, tok: Tokenizer, path: Path) -> None:
    """The model as a float16 GGUF, with its byte-level BPE vocabulary."""
    c = model.config
    vocab = vocabulary_of(tok, c.vocab_size)
    write_llama(path, shape_of(model), vocab, c.bos_token_id, c.eos_token_id, tensors(model),
                eps=c.rms_norm_eps)


def export(model: LlamaForCausalLM, tok: Tokenizer, out: Path, quant: str = "q4_0") -> None:
    """Write the quantized GGUF to out (the float16 one is a temporary next to it)."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}: choose one of {', '.join(QUANTS)}")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".f16-") as tmp:
        f16 = Path(tmp) / "model-f16.gguf"
        write_f16(model, tok, f16)
        if quant == "f16":
            f16.replace(out)
        else:
            quantize(f16, out, quant)
