"""Synthetic GGUF models: random weights in the exact shape of real ones.

No weights can be downloaded where the project is built and tested, so it
writes its own: a LLaMA-architecture model with a byte-level BPE vocabulary
of the real model's size, its merges learned from English text (so characters
per token are realistic), quantized by llama.cpp itself. Useful to size a
board before downloading a model, and to test the whole appliance.

A *scripted* model says a given text over and over, whatever it is told. It
is built by structure: every block's output projection is zero, so the
residual stream is the current token's embedding, and the output matrix maps
each script token's embedding onto the next script token: a bigram chain that
llama.cpp runs like any other model.
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

CORPUS = Path(__file__).parent / "data" / "english.txt"
BOS, EOS = "<s>", "</s>"


@dataclass(frozen=True)
class Shape:
    vocab: int
    embd: int
    layers: int
    heads: int
    kv_heads: int
    ff: int
    context: int
    rope_theta: float
    tied: bool

    @property
    def params(self) -> int:
        head_dim = self.embd // self.heads
        attn = 2 * self.embd * self.embd + 2 * self.embd * self.kv_heads * head_dim
        block = attn + 3 * self.embd * self.ff + 2 * self.embd
        out = 0 if self.tied else self.vocab * self.embd
        return self.vocab * self.embd + self.layers * block + self.embd + out


SHAPES: Dict[str, Shape] = {
    "tiny": Shape(2048, 256, 4, 4, 4, 768, 2048, 10000.0, False),
    "smollm2-135m": Shape(49152, 576, 30, 9, 3, 1536, 8192, 100000.0, True),
    "tinyllama-1.1b": Shape(32000, 2048, 22, 32, 4, 5632, 2048, 10000.0, False),
    "llama-3.2-1b": Shape(128256, 2048, 16, 32, 8, 8192, 131072, 500000.0, True),
}

QUANTS = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
          "f16": "LLAMA_FTYPE_MOSTLY_F16"}

SCRIPT_MARGIN = 30.0  # logit lead of the scripted next token; Q4_0 noise is far smaller


@lru_cache(maxsize=4)
def vocabulary(size: int) -> Tuple[List[str], List[int], List[str]]:
    """Tokens, token types and merges of a byte-level BPE learned from the corpus.

    A corpus too small for the full size is padded with reserved control
    tokens, so the vocabulary always has the real model's size.
    """
    from gguf import TokenType
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines(True), trainer)
    by_id = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    types = [int(TokenType.CONTROL if t in (BOS, EOS) else TokenType.NORMAL) for t in tokens]
    for i in range(size - len(tokens)):
        tokens.append(f"<|reserved_{i}|>")
        types.append(int(TokenType.CONTROL))
    merges = [m if isinstance(m, str) else " ".join(m)
              for m in json.loads(tok.to_str())["model"]["merges"]]
    return tokens, types, merges


def _encode(text: str, size: int) -> List[int]:
    """Token ids of text in the synthetic vocabulary (the same pre-tokenizer llama.cpp uses)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens, _, merges = vocabulary(size)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok.encode(text).ids


def _chain(script: List[int], tokens: List[str]) -> Dict[int, int]:
    """next[token] for a cyclic script (its end wraps to its start).

    A bigram chain cannot follow a token that the script repeats with a
    different successor, so that is refused rather than silently garbled.
    """
    nxt: Dict[int, int] = {}
    for i, t in enumerate(script):
        after = script[(i + 1) % len(script)]
        if nxt.setdefault(t, after) != after:
            raise ValueError(
                f"the script repeats the token {tokens[t]!r} with a different word after it: "
                "a scripted model can only follow a script whose tokens each appear once"
            )
    return nxt


def _write_f16(shape: Shape, path: Path, seed: int, script: Optional[str]) -> None:
    import gguf

    tokens, types, merges = vocabulary(shape.vocab)
    rng = np.random.default_rng(seed)
    d, hd = shape.embd, shape.embd // shape.heads

    def rand(rows: int, cols: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float16)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(shape.context)
    w.add_embedding_length(d)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(shape.vocab)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(BOS))
    w.add_eos_token_id(tokens.index(EOS))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    ones = np.ones(d, dtype=np.float32)
    if script:
        emb, out = _scripted_embeddings(shape, _encode(script, shape.vocab), rng)
    else:
        emb, out = rand(shape.vocab, d, 1.0), (None if shape.tied else rand(shape.vocab, d))
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", ones)
    if out is not None:
        w.add_tensor("output.weight", out)
    for i in range(shape.layers):
        zero_out = np.zeros((d, d), np.float16) if script else None
        w.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(d, d))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(shape.kv_heads * hd, d))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(shape.kv_heads * hd, d))
        w.add_tensor(f"blk.{i}.attn_output.weight", zero_out if script else rand(d, d))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(shape.ff, d))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(shape.ff, d))
        down = np.zeros((d, shape.ff), np.float16) if script else rand(d, shape.ff)
        w.add_tensor(f"blk.{i}.ffn_down.weight", down)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _scripted_embeddings(shape: Shape, script: List[int], rng: np.random.Generator):
    """Embeddings and output rows that make argmax(next | token) follow the script."""
    if not script:
        raise ValueError("the script is empty: give the text the model should say")
    d = shape.embd
    emb = rng.standard_normal((shape.vocab, d), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    # Every token outside the script shares one direction, which leads to the start.
    other = rng.standard_normal(d, dtype=np.float32)
    other /= np.linalg.norm(other)
    in_script = np.zeros(shape.vocab, bool)
    in_script[script] = True
    emb[~in_script] = other
    out = np.zeros((shape.vocab, d), np.float32)
    # After RMSNorm a unit row becomes sqrt(d) long: scale so the chosen logit is the margin.
    scale = SCRIPT_MARGIN / np.sqrt(d)
    for token, nxt in _chain(script, vocabulary(shape.vocab)[0]).items():
        out[nxt] += emb[token] * scale
    out[script[0]] += other * scale
    return emb.astype(np.float16), out.astype(np.float16)


def quantize(src: Path, dst: Path, quant: str) -> None:
    """Quantize with llama.cpp's own quantizer, as a user's model would be."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = os.cpu_count() or 1
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # llama.cpp lists every tensor on stderr
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {quant} (code {rc})")


def synthesize(shape: str, out: Path, quant: str = "q4_0", seed: int = 0,
               script: Optional[str] = None) -> Path:
    """Write a random-weight (or scripted) GGUF of a named shape to out."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}: choose one of {', '.join(QUANTS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        f16 = Path(tmp) / "f16.gguf"
        _write_f16(SHAPES[shape], f16, seed, script)
        if quant == "f16":
            os.replace(f16, out)
        else:
            quantize(f16, Path(tmp) / "q.gguf", quant)
            os.replace(Path(tmp) / "q.gguf", out)
    return out


def chars_per_token(size: int, text: str) -> float:
    return len(text) / max(1, len(_encode(text, size)))
