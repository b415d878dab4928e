"""A peft LoRA as llama.cpp's GGUF adapter, and a merged standalone model on the base's vocabulary.

llama.cpp applies an adapter as W x + scale * B (A x) with scale = alpha / rank,
on tensors named like the model's own plus `.lora_a` / `.lora_b`. Its Q and K
rows are in the rotary-pair order (see export.permute); B's output rows are the
projection's rows, so B of q and k is permuted the same way (A is not: it acts
on the input side). Written in float16: half of float32's size, and llama.cpp
reads it the same.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, Tuple

import numpy as np

from appliance.persona.build import BuildError
from appliance.persona.build.export import permute, shape_of, tensors

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

# transformers' module name -> llama.cpp's tensor name, within block N
MODULES: Dict[str, str] = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def lora_pairs(peft_model) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """(llama.cpp weight name, A, B) for every LoRA-wrapped linear, B already permuted."""
    config = peft_model.base_model.model.config
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for name, module in peft_model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        parts = name.split(".")
        layer = int(parts[parts.index("layers") + 1])
        target = MODULES.get(".".join(parts[parts.index("layers") + 2:]))
        if target is None:
            raise BuildError(f"LoRA on {name}: llama.cpp adapters cover only the attention "
                             f"and feed-forward projections ({', '.join(MODULES)})")
        a = module.lora_A["default"].weight.detach().float().cpu().numpy()
        b = module.lora_B["default"].weight.detach().float().cpu().numpy()
        if target in heads:
            b = permute(b, heads[target])
        yield f"blk.{layer}.{target}.weight", a, b


def write_adapter(peft_model, path: Path, alpha: float) -> int:
    """Write the adapter GGUF; returns how many projections it adapts."""
    import gguf

    pairs = list(lora_pairs(peft_model))
    if not pairs:
        raise BuildError("the model has no LoRA weights to export")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for name, a, b in pairs:
        w.add_tensor(name + ".lora_a", a.astype(np.float16))
        w.add_tensor(name + ".lora_b", b.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return len(pairs)


def write_merged(model: LlamaForCausalLM, base_gguf: Path, out: Path, quant: str) -> None:
    """The merged model as a quantized GGUF that keeps every tokenizer.* value of the base.

    The base's vocabulary, merges, pre-tokenizer name (`tokenizer.ggml.pre`, e.g.
    "smollm") and chat template are copied as they are, so the merged model
    tokenizes exactly as the base and its adapter do.
    """
    import gguf

    from appliance.engine.synth import add_shape, quantize, write_tensors

    reader = gguf.GGUFReader(str(base_gguf))
    shape = shape_of(model)
    c = model.config
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".merge-") as tmp:
        f16 = Path(tmp) / "merged-f16.gguf"
        w = gguf.GGUFWriter(str(f16), "llama")
        add_shape(w, shape, c.rms_norm_eps)
        w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
        for field in reader.fields.values():
            if field.name.startswith("tokenizer."):
                _copy_field(w, field)
        write_tensors(w, tensors(model))
        if quant == "f16":
            f16.replace(out)
        else:
            quantize(f16, out, quant)


def _copy_field(w, field) -> None:
    """One metadata value from a GGUFReader field, with its own type."""
    import gguf

    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == gguf.GGUFValueType.STRING:
            values = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        else:
            values = [field.parts[i].tolist()[0] for i in field.data]
        w.add_key_value(field.name, values, kind, sub_type=sub)
    elif kind == gguf.GGUFValueType.STRING:
        w.add_key_value(field.name, bytes(field.parts[field.data[0]]).decode("utf-8"), kind)
    else:
        w.add_key_value(field.name, field.parts[field.data[0]].tolist()[0], kind)
