"""llama.cpp through its C API: a model, its context and a sampler chain.

llama-cpp-python's package imports its high-level layer (numpy, jinja2, diskcache)
with its ctypes bindings: 24 MB of a Pi Zero's 512 before any model is loaded, for
nothing the appliance uses. This loads the bindings by themselves; a later
`import llama_cpp` (the model tools, the bench's bare loop) reuses the same modules.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import threading
from collections import deque
from pathlib import Path
from types import ModuleType
from typing import Iterable, List, Optional, Sequence

_LOG_ERROR = 4  # ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_errors: deque = deque(maxlen=4)  # llama.cpp's error lines since a call began: why it failed
_lib: Optional[ModuleType] = None
_log_callback = None  # kept referenced: llama.cpp calls it for as long as the process lives
_loading = threading.Lock()  # two engines may start at once (a switch loads the next)


def bindings() -> ModuleType:
    """llama-cpp-python's ctypes module, loaded once without the package's __init__."""
    global _lib
    with _loading:
        if _lib is None:
            _lib = _load()
    return _lib


def _load() -> ModuleType:
    global _log_callback
    spec = importlib.util.find_spec("llama_cpp")  # finds the package; runs nothing of it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llama-cpp-python is not installed: pip install llama-cpp-python")
    root = Path(list(spec.submodule_search_locations)[0])
    for name in ("_ctypes_extensions", "llama_cpp"):
        full = f"llama_cpp.{name}"
        if full in sys.modules:
            continue
        part = importlib.util.spec_from_file_location(full, root / f"{name}.py")
        module = importlib.util.module_from_spec(part)
        sys.modules[full] = module  # llama_cpp.py imports _ctypes_extensions by this name
        try:
            part.loader.exec_module(module)
        except BaseException:
            del sys.modules[full]
            raise
    lib = sys.modules["llama_cpp.llama_cpp"]

    @lib.llama_log_callback
    def log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level == _LOG_ERROR:
            _errors.append(text.decode("utf-8", errors="replace").strip())

    _log_callback = log
    lib.llama_log_set(log, None)  # its load chatter would fill the journal
    lib.llama_backend_init()
    return lib


def begin() -> None:
    """Forget earlier error lines: the next call's own are then its cause. The log is ours
    again too: an `import llama_cpp` since (the model tools) installs its own."""
    _errors.clear()
    bindings().llama_log_set(_log_callback, None)


def cause() -> str:
    """The first error line llama.cpp logged since begin(): the cause (the lines after it
    say only that loading failed), or ""."""
    return _errors[0] if _errors else ""


class Model:
    """A GGUF model in memory, and its vocabulary (which is safe to read from any thread)."""

    def __init__(self, path: Path, mmap: bool):
        lib = self._lib = bindings()
        params = lib.llama_model_default_params()
        params.use_mmap = mmap
        begin()
        self.ptr = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise RuntimeError(cause() or "llama.cpp could not load it")
        self.vocab = lib.llama_model_get_vocab(self.ptr)
        self.n_vocab: int = lib.llama_vocab_n_tokens(self.vocab)
        self.bos: int = lib.llama_vocab_bos(self.vocab)
        self.eos: int = lib.llama_vocab_eos(self.vocab)
        self.eot: int = lib.llama_vocab_eot(self.vocab)
        template = lib.llama_model_chat_template(self.ptr, None)
        self.chat_template: Optional[str] = template.decode("utf-8") if template else None

    def tokenize(self, data: bytes, add_special: bool, parse_special: bool) -> List[int]:
        lib = self._lib
        room = len(data) + 2  # a token per byte at most, and the BOS/EOS a model may add
        out = (lib.llama_token * room)()
        n = lib.llama_tokenize(self.vocab, data, len(data), out, room, add_special,
                               parse_special)
        if n < 0:  # -n tokens are needed
            room = -n
            out = (lib.llama_token * room)()
            n = lib.llama_tokenize(self.vocab, data, len(data), out, room, add_special,
                                   parse_special)
        return out[:n]

    def piece(self, token: int, special: bool = False) -> bytes:
        """A token's bytes (part of a UTF-8 character, maybe); special: render control
        tokens' text (`<|im_end|>`) instead of nothing."""
        lib = self._lib
        buf = ctypes.create_string_buffer(32)
        n = lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Iterable[int], special: bool = False) -> bytes:
        return b"".join(self.piece(t, special) for t in tokens)

    def is_end(self, token: int) -> bool:
        """End-of-generation or a control token: where a reply ends."""
        lib = self._lib
        return bool(lib.llama_vocab_is_eog(self.vocab, token)
                    or lib.llama_vocab_is_control(self.vocab, token))

    def close(self) -> None:
        if self.ptr:
            self._lib.llama_model_free(self.ptr)
            self.ptr = None


class Context:
    """A model's context: its KV memory and the tokens that memory holds, in order."""

    def __init__(self, model: Model, n_ctx: int, n_batch: int, n_threads: int,
                 kv_quant: bool):
        lib = self._lib = bindings()
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        if kv_quant:  # Q8_0 halves the KV memory; llama.cpp needs flash attention for it
            params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
            params.type_k = params.type_v = lib.GGML_TYPE_Q8_0
        begin()
        self.ptr = lib.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise RuntimeError(cause() or "llama.cpp could not make a context")
        self.memory = lib.llama_get_memory(self.ptr)
        self.n_batch = n_batch
        self.tokens: List[int] = []

    def decode(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens after those held; the logits of the last are then sampled."""
        lib = self._lib
        for i in range(0, len(tokens), self.n_batch):
            part = tokens[i : i + self.n_batch]
            ids = (lib.llama_token * len(part))(*part)
            # Positions follow the memory's own; only the last token's logits are kept.
            rc = lib.llama_decode(self.ptr, lib.llama_batch_get_one(ids, len(part)))
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc}"
                                   f"{': no room in the KV memory' if rc == 1 else ''})")
            self.tokens.extend(part)

    def rewind(self, n: int) -> None:
        """Forget every token from position n on."""
        self._lib.llama_memory_seq_rm(self.memory, -1, n, -1)
        del self.tokens[n:]

    def drop(self, start: int, end: int) -> None:
        """Forget tokens start..end-1 and move those after them down, as llama.cpp's own
        context shift does."""
        lib = self._lib
        lib.llama_memory_seq_rm(self.memory, 0, start, end)
        lib.llama_memory_seq_add(self.memory, 0, end, -1, start - end)
        del self.tokens[start:end]

    def set_adapter(self, adapter) -> bool:
        """Apply one LoRA adapter (a llama_adapter_lora_p) or none; False if refused."""
        lib = self._lib
        adapters = (lib.llama_adapter_lora_p_ctypes * 1)(adapter) if adapter else None
        scales = (ctypes.c_float * 1)(1.0) if adapter else None
        return lib.llama_set_adapters_lora(self.ptr, adapters, 1 if adapter else 0,
                                           scales) == 0

    def close(self) -> None:
        if self.ptr:
            self._lib.llama_free(self.ptr)
            self.ptr = None


MIN_P = 0.05  # llama-cpp-python's default, which every persona so far was tuned under


class Sampler:
    """llama.cpp's sampler chain for one reply: repeat penalty, then top-k, top-p, min-p
    and temperature (or greedy at temperature 0).

    The penalty counts the prompt, as llama.cpp's own tools do (the last `last_n` tokens
    of prompt and reply), except the tokens in `spare`: where a reply ends, and the line
    break (llama.cpp's old penalize_nl default).
    """

    def __init__(self, n_vocab: int, temperature: float, top_k: int, top_p: float,
                 repeat: float, last_n: int, seed: int, prompt: Sequence[int],
                 spare: frozenset):
        lib = self._lib = bindings()
        self.ptr = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        self._penalties = None
        self._spare = spare
        if repeat != 1.0:
            self._recent = deque((t for t in prompt if t not in spare), maxlen=last_n)
            self._penalties = lib.llama_sampler_init_penalties(n_vocab, last_n, repeat, 0.0,
                                                               0.0)
            self._add(self._penalties)
            self._refill()
        if temperature <= 0.0:
            self._add(lib.llama_sampler_init_greedy())
        else:
            self._add(lib.llama_sampler_init_top_k(top_k))
            self._add(lib.llama_sampler_init_top_p(top_p, 1))
            self._add(lib.llama_sampler_init_min_p(MIN_P, 1))
            self._add(lib.llama_sampler_init_temp(temperature))
            self._add(lib.llama_sampler_init_dist(seed))

    def _add(self, sampler) -> None:
        self._lib.llama_sampler_chain_add(self.ptr, sampler)  # the chain owns it now

    def _refill(self) -> None:
        lib = self._lib
        lib.llama_sampler_reset(self._penalties)
        for token in self._recent:
            lib.llama_sampler_accept(self._penalties, token)

    def sample(self, context: Context) -> int:
        """The next token after what the context evaluated last (it then counts as seen)."""
        token = self._lib.llama_sampler_sample(self.ptr, context.ptr, -1)
        if self._penalties is not None:
            if token in self._spare:  # the chain counted it: take it back
                self._refill()
            else:
                self._recent.append(token)
        return token

    def close(self) -> None:
        if self.ptr:
            self._lib.llama_sampler_free(self.ptr)
            self.ptr = None
