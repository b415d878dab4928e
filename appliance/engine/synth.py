"""Synthetic GGUF models: random weights in the exact shape of real ones.

No weights can be downloaded where the project is built and tested, so it
writes its own: a LLaMA-architecture model with a byte-level BPE vocabulary
of the real model's size, its merges learned from English text (so characters
per token are realistic), quantized by llama.cpp itself. Useful to size a
board before downloading a model, and to test the whole appliance.

A *scripted* model says a given text whatever it is told. It is built by
structure: every block's output projections (attn_output, ffn_down) are zero,
so the residual stream stays the current token's embedding, and the output
matrix maps each script token's embedding onto the next script token: a
bigram chain that llama.cpp runs like any other model, at the same cost.

How a scripted model starts and ends: after any token that is not part of its
chain it says the script from the beginning, and after the script's last token
it starts over (it never emits EOS: a prompt may end in that token). So end a
script with the stop string the caller cuts at, e.g. "...reply.\\nROMEO:", and
the model behaves like a real one inventing the next turn, and a prompt ending
in a speaker label's colon starts the script. After a token that the chain
uses mid-way, the model continues from that point instead.

Each token may appear once in the chain. A repeated word is spelled again
with other tokens (see script_chain), but a single-byte piece such as a
punctuation mark has few spellings: keep scripts to about one of each.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Set, Tuple

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

CORPUS = Path(__file__).parents[1] / "data" / "english.txt"
HELD_OUT_CHARS = 20_000  # the corpus tail, kept out of BPE training to measure on
BOS, EOS = "<s>", "</s>"
RMS_EPS = 1e-5
CHUNK = 1 << 22  # floats generated at a time: bounds the float32 scratch to 16 MB
SCRIPT_MARGIN = 30.0  # the scripted logit's lead; cross-talk is ~MARGIN/sqrt(n_embd)


@dataclass(frozen=True)
class Shape:
    """The dimensions of a real model, as in its config.json."""

    vocab: int
    embd: int
    layers: int
    heads: int
    kv_heads: int
    ff: int
    context: int
    rope_theta: float
    tied: bool  # the output matrix is the token embedding

    @property
    def head_dim(self) -> int:
        return self.embd // self.heads

    @property
    def params(self) -> int:
        kv = self.kv_heads * self.head_dim
        block = 2 * self.embd * (self.embd + kv) + 3 * self.embd * self.ff + 2 * self.embd
        out = 0 if self.tied else self.vocab * self.embd
        return self.vocab * self.embd + self.layers * block + self.embd + out


SHAPES: Dict[str, Shape] = {
    # Loads in milliseconds: for tests. Dims are multiples of 32 so Q4_0 applies everywhere.
    "tiny": Shape(2048, 256, 4, 4, 4, 768, 2048, 10000.0, False),
    "smollm2-135m": Shape(49152, 576, 30, 9, 3, 1536, 8192, 100000.0, True),
    "tinyllama-1.1b": Shape(32000, 2048, 22, 32, 4, 5632, 2048, 10000.0, False),
    "llama-3.2-1b": Shape(128256, 2048, 16, 32, 8, 8192, 131072, 500000.0, True),
}

# llama.cpp file types by the names people use for them.
QUANTS: Dict[str, str] = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
}


def held_out_text() -> str:
    """English the vocabulary never saw: an honest characters-per-token test."""
    return CORPUS.read_text(encoding="utf-8")[-HELD_OUT_CHARS:]


@lru_cache(maxsize=4)
def _trained(size: int) -> Tokenizer:
    """A byte-level BPE tokenizer learned from the corpus (minus its held-out tail).

    Imported here, not at the top: the Pi imports SHAPES without the synth extra.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    english = CORPUS.read_text(encoding="utf-8")[:-HELD_OUT_CHARS]
    tok.train_from_iterator(english.splitlines(True), trainer)
    return tok


def vocabulary(size: int) -> Tuple[List[str], List[int], List[str]]:
    """Tokens, token types and merges (as "a b") of the learned vocabulary, exactly size long."""
    return vocabulary_of(_trained(size), size)


def vocabulary_of(tok: Tokenizer, size: int) -> Tuple[List[str], List[int], List[str]]:
    """Tokens, token types and merges of a byte-level BPE tokenizer, padded to size.

    Its special (added) tokens are CONTROL. A smaller vocabulary than the model's
    (a corpus yields fewer merges than asked for) is padded with reserved tokens
    of type UNUSED (not CONTROL: llama.cpp scans every control token when it
    tokenizes with specials).
    """
    from gguf import TokenType

    special = {t.content for t in tok.get_added_tokens_decoder().values()}
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    types = [int(TokenType.CONTROL if t in special else TokenType.NORMAL) for t in tokens]
    padding = size - len(tokens)
    tokens += [f"<|reserved_{i}|>" for i in range(padding)]
    types += [int(TokenType.UNUSED)] * padding
    # The BPE model has no merges getter; its JSON has them (pairs, or "a b" in old versions).
    merges = [m if isinstance(m, str) else " ".join(m)
              for m in json.loads(tok.to_str())["model"]["merges"]]
    return tokens, types, merges


def script_chain(script: str, vocab_size: int) -> List[int]:
    """Token ids that spell the script, each id once, so a bigram chain can follow it.

    The script is tokenized as usual; a token already in the chain (a repeated
    word) is spelled again with unused shorter tokens: llama.cpp detokenizes
    any spelling to the same text. A piece with no unused spelling left (a
    colon twice: it is a single byte) is refused.
    """
    from gguf import TokenType

    if not script:
        raise ValueError("the script is empty: give the text the model should say")
    tokens, types, _ = vocabulary(vocab_size)
    normal = {t: i for i, (t, kind) in enumerate(zip(tokens, types)) if kind == TokenType.NORMAL}
    chain: List[int] = []
    encoding = _trained(vocab_size).encode(script)
    for token, (start, end) in zip(encoding.ids, encoding.offsets):
        spelling = _spell(tokens[token], normal, set(chain))
        if spelling is None:
            raise ValueError(
                f"the script repeats {script[start:end]!r} (in {script[:end][-20:]!r}) too "
                "often: a scripted model is a bigram chain with each token in it once, and "
                "this piece has no unused spelling left"
            )
        chain += spelling
    return chain


def _spell(piece: str, normal: Dict[str, int], used: Set[int]) -> Optional[List[int]]:
    """Unused tokens that concatenate to piece, longest first (a piece is a few characters)."""
    if not piece:
        return []
    for end in range(len(piece), 0, -1):
        token = normal.get(piece[:end])
        if token is not None and token not in used:
            rest = _spell(piece[end:], normal, used | {token})
            if rest is not None:
                return [token, *rest]
    return None


def _gaussian(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    """Random float16 weights, generated a chunk of rows at a time."""
    out = np.empty((rows, cols), np.float16)
    step = max(1, CHUNK // cols)
    for r in range(0, rows, step):
        n = min(step, rows - r)
        out[r:r + n] = rng.standard_normal((n, cols), dtype=np.float32) * scale
    return out


def _script_vectors(shape: Shape, chain: List[int], rng: np.random.Generator) -> np.ndarray:
    """One random unit direction per chain token, and a last one shared by every other token."""
    v = rng.standard_normal((len(chain) + 1, shape.embd), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _script_embeddings(shape: Shape, chain: List[int], vectors: np.ndarray) -> np.ndarray:
    emb = np.empty((shape.vocab, shape.embd), np.float16)
    emb[:] = vectors[-1]
    emb[chain] = vectors[:-1]
    return emb


def _script_output(shape: Shape, chain: List[int], vectors: np.ndarray) -> np.ndarray:
    """Output rows whose argmax after each token is its successor in the chain.

    A token's row is its predecessors' directions: after RMSNorm a unit vector
    is sqrt(n_embd) long, so scaled by MARGIN / sqrt(n_embd) the successor's
    logit is MARGIN, while random unit directions are near-orthogonal and give
    every other token a logit of about MARGIN / sqrt(n_embd). The script's
    first token follows both its last token and every token outside it.
    """
    scale = SCRIPT_MARGIN / np.sqrt(shape.embd)
    out = np.zeros((shape.vocab, shape.embd), np.float16)
    out[chain[1:]] = vectors[:-2] * scale
    out[chain[0]] = (vectors[-2] + vectors[-1]) * scale
    return out


Tensor = Tuple[str, Tuple[int, ...], Callable[[], np.ndarray]]


def _tensors(shape: Shape, rng: np.random.Generator, chain: Optional[List[int]]) -> List[Tensor]:
    """Name, numpy shape and a maker for every tensor, so each is built only when written.

    Makers run in file order and draw from one generator: a seed gives one model.
    """
    d, kv, ff = shape.embd, shape.kv_heads * shape.head_dim, shape.ff
    vectors = _script_vectors(shape, chain, rng) if chain else None

    def rand(rows: int, cols: int, scale: float = 0.02) -> Callable[[], np.ndarray]:
        return lambda: _gaussian(rng, rows, cols, scale)

    def block_output(rows: int, cols: int) -> Callable[[], np.ndarray]:
        """Zero in a scripted model, so blocks leave the residual stream alone."""
        return (lambda: np.zeros((rows, cols), np.float16)) if chain else rand(rows, cols)

    def ones() -> np.ndarray:
        return np.ones(d, np.float32)

    out: List[Tensor] = [
        ("token_embd.weight", (shape.vocab, d),
         (lambda: _script_embeddings(shape, chain, vectors)) if chain
         else rand(shape.vocab, d, 1.0)),
        ("output_norm.weight", (d,), ones),
    ]
    # A scripted model needs its own output matrix even where the real one ties:
    # the chain is not symmetric, embeddings times their transpose would be.
    if chain or not shape.tied:
        out.append(("output.weight", (shape.vocab, d),
                    (lambda: _script_output(shape, chain, vectors)) if chain
                    else rand(shape.vocab, d)))
    for i in range(shape.layers):
        b = f"blk.{i}."
        out += [
            (b + "attn_norm.weight", (d,), ones),
            (b + "attn_q.weight", (d, d), rand(d, d)),
            (b + "attn_k.weight", (kv, d), rand(kv, d)),
            (b + "attn_v.weight", (kv, d), rand(kv, d)),
            (b + "attn_output.weight", (d, d), block_output(d, d)),
            (b + "ffn_norm.weight", (d,), ones),
            (b + "ffn_gate.weight", (ff, d), rand(ff, d)),
            (b + "ffn_up.weight", (ff, d), rand(ff, d)),
            (b + "ffn_down.weight", (d, ff), block_output(d, ff)),
        ]
    return out


def _write_f16(shape: Shape, path: Path, seed: int, chain: Optional[List[int]],
               chat_template: Optional[str] = None) -> None:
    tokens, types, merges = vocabulary(shape.vocab)
    write_llama(path, shape, (tokens, types, merges), tokens.index(BOS), tokens.index(EOS),
                _tensors(shape, np.random.default_rng(seed), chain),
                chat_template=chat_template)


def add_shape(w, shape: Shape, eps: float) -> None:
    """A llama model's hyperparameters on a GGUFWriter, as llama.cpp reads them."""
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.embd)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ff)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(shape.vocab)


def write_llama(path: Path, shape: Shape, vocab: Tuple[List[str], List[int], List[str]],
                bos: int, eos: int, tensors: List[Tensor], eps: float = RMS_EPS,
                chat_template: Optional[str] = None) -> None:
    """A float16 LLaMA GGUF (norms float32) with a byte-level BPE vocabulary.

    Tensors are made one at a time as they are written, so memory holds one.
    """
    import gguf

    tokens, types, merges = vocab
    w = gguf.GGUFWriter(str(path), "llama")
    add_shape(w, shape, eps)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # llama.cpp's name for GPT-2's pre-tokenizer ("gpt2" is unknown)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    write_tensors(w, tensors)


def write_tensors(w, tensors: List[Tensor]) -> None:
    """Header, metadata and tensors (f32 norms, f16 matrices), then close: each tensor is
    made only when written, so memory holds one at a time."""
    for name, dims, _ in tensors:
        dtype = np.dtype(np.float32 if len(dims) == 1 else np.float16)
        w.add_tensor_info(name, dims, dtype, int(np.prod(dims)) * dtype.itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for _, _, make in tensors:
        w.write_tensor_data(make())
    w.close()


@contextmanager
def quiet_llama() -> Iterator[None]:
    """Silence llama.cpp's log (it lists every tensor while quantizing).

    llama-cpp-python maps llama.cpp's log levels with an outdated enum, so
    warnings pass even its verbose=False; only CRITICAL stops them.
    """
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def quantize(src: Path, dst: Path, quant: str) -> None:
    """Quantize with llama.cpp's own quantizer, as a downloaded model would have been."""
    import llama_cpp

    if Path(src).resolve() == Path(dst).resolve():
        raise ValueError("quantize into another file: llama.cpp truncates it while reading")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = os.cpu_count() or 1
    with quiet_llama():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(),
                                            ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {quant} (code {rc})")


def synthesize(shape: str, out: Path, quant: str = "q4_0", seed: int = 0,
               script: Optional[str] = None, chat_template: Optional[str] = None) -> Path:
    """Write a random-weight (or scripted, see the module notes) GGUF of a named shape to out.

    The float16 original is written next to out (same file system, so the
    final rename is atomic) and removed whatever happens.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}: choose one of {', '.join(QUANTS)}")
    dims = SHAPES[shape]
    chain = script_chain(script, dims.vocab) if script is not None else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="synth-") as tmp:
        f16, quantized = Path(tmp) / "f16.gguf", Path(tmp) / "quantized.gguf"
        _write_f16(dims, f16, seed, chain, chat_template)
        quantize(f16, quantized, quant)
        os.replace(quantized, out)
    return out


def chars_per_token(model: Path, text: str) -> float:
    """Characters per token as llama.cpp itself tokenizes text with the model's vocabulary.

    Through the C API with a vocabulary-only load: llama_cpp.Llama would also
    make a context, which warns about the missing training context length.
    """
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with quiet_llama():
        handle = llama_cpp.llama_model_load_from_file(str(model).encode(), params)
    if not handle:
        raise RuntimeError(f"llama.cpp could not load the vocabulary of {model}")
    try:
        data = text.encode("utf-8")
        # With no room for tokens llama.cpp returns minus the number it needs.
        needed = -llama_cpp.llama_tokenize(llama_cpp.llama_model_get_vocab(handle), data,
                                           len(data), None, 0, False, False)
    finally:
        llama_cpp.llama_model_free(handle)
    return len(text) / max(1, needed)


def synth_command(shape: str, out: Path, quant: str = "q4_0", seed: int = 0,
                  script: Optional[str] = None) -> str:
    """Synthesize, then the one line a person wants to see: size, params, vocabulary."""
    started = time.perf_counter()
    path = synthesize(shape, out, quant=quant, seed=seed, script=script)
    seconds = time.perf_counter() - started
    dims = SHAPES[shape]
    return (f"wrote {path}: {shape} shape, {quant}, {path.stat().st_size / 1e6:.1f} MB, "
            f"{dims.params / 1e6:.1f}M params, vocab {dims.vocab}, "
            f"{chars_per_token(path, held_out_text()):.2f} chars/token on held-out English, "
            f"{seconds:.1f} s")
