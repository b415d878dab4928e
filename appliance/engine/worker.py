"""The language model: one llama.cpp model, owned by one worker thread.

llama.cpp is not thread-safe, so every call into it happens on the worker; the
rest of the appliance talks to the worker through a job queue and receives the
reply as a stream of text pieces.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Union

from appliance.engine import libllama
from appliance.engine.gguf_header import is_gguf
from appliance.engine.libllama import Context, Model, Sampler
from appliance.errors import UserError
from appliance.system.memory import use_mmap


class EngineError(UserError):
    """The model could not be loaded or run; the message names the fix."""


def check_gguf(path: Path) -> None:
    """Reject a missing or non-GGUF file before llama.cpp sees it (it would only abort)."""
    if not path.is_file():
        raise EngineError(f"model file {path} does not exist: give the path of a .gguf model")
    if not is_gguf(path):
        raise EngineError(
            f"{path} is not a GGUF model (it does not start with 'GGUF'): "
            "convert it with llama.cpp's convert_hf_to_gguf.py or pick a .gguf file"
        )


def physical_cores() -> int:
    """Physical core count (SMT siblings do not speed up llama.cpp decoding)."""
    try:
        with open("/proc/cpuinfo") as f:
            pairs = set()
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    pairs.add((phys, core))
            if pairs:
                return len(pairs)
    except OSError:
        pass
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 120
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1


class StopFilter:
    """Cuts a text stream at the first stop string.

    Text that could still turn out to be the start of a stop string is held
    back, so nothing of a stop sequence ever reaches the paper.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False
        self.overshoot = ""  # what followed the stop string in the text fed
        self.stopped_at = ""  # the stop string that matched

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.held += text
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self.stopped_at = next(s for s in self.stops if self.held.find(s) == cut)
            self.overshoot = self.held[cut + len(self.stopped_at) :]
            out, self.held = self.held[:cut], ""
            return out
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.held)), 0, -1):
                if self.held.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(self.held) - keep :]
        return out

    def finish(self) -> str:
        """The stream ended without a stop: what was held back is reply text after all."""
        out, self.held = ("" if self.stopped else self.held), ""
        return out


class Utf8Joiner:
    """Joins token bytes into text without splitting a multi-byte character."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, data: bytes) -> str:
        data = self.pending + data
        for cut in range(len(data), max(len(data) - 4, -1), -1):
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self.pending = data[cut:]
            return text
        self.pending = b""
        return data.decode("utf-8", errors="ignore")


@dataclass
class Reply:
    """A reply being generated: iterate it for text pieces; cancel() stops it within a token."""

    pieces: queue.Queue[Optional[str]] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sampled: List[int] = field(default_factory=list)  # every token sampled, in order
    prompt_tokens: int = 0
    evaluated: int = 0  # prompt tokens that were not in the cache at submit
    stop_reason: str = ""  # stop, eos, length, cancelled
    stopped_at: str = ""  # the stop string that ended the reply
    overshoot: str = ""  # text sampled after the stop string, in the stop's last token
    first_token_at: float = 0.0
    done_at: float = 0.0
    error: Optional[BaseException] = None
    # Called on the worker with (reply, piece) instead of queueing: saves a thread hop a token.
    listener: Optional[Callable[[Reply, Optional[str]], None]] = None

    @property
    def tokens(self) -> int:
        return len(self.sampled)

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, piece: Optional[str]) -> None:
        """Hand a piece (None: the end) to the reader, or to the listener if one is set."""
        if self.listener is not None:
            self.listener(self, piece)
        else:
            self.pieces.put(piece)

    def __iter__(self) -> Iterator[str]:
        while True:
            piece = self.pieces.get()
            if piece is None:
                if self.error is not None:
                    raise self.error
                return
            yield piece

    def text(self) -> str:
        return "".join(self)


def token_text(llm, token: int) -> str:
    """A special token's text (BOS, EOS), as a chat template names it; "" for none (-1).
    llm: a libllama.Model or a llama_cpp.Llama (the model tools')."""
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="ignore")


PENALTY_LAST_N = 64  # llama.cpp's default repeat window
DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a fresh random seed each time


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


PREFILL_CHUNK = 8  # tokens per evaluation while typing: small, so a submit never waits long
# Tokens per evaluation of a prompt at submit: big enough to batch well, small enough that
# each reports progress to the watchdog well within HUNG_AFTER, even at a Pi 4's 11 tok/s.
PROMPT_CHUNK = 64
# A block of at least this many cached tokens that the prompt keeps after a dropped block
# (the conversation let its oldest exchanges go) is shifted down in llama.cpp's KV memory
# rather than evaluated again.
SHIFT_MIN = 32


class Engine:
    """One GGUF model (and maybe a LoRA adapter on it) on one worker thread.

    An adapter is applied with llama.cpp's adapter API on the loaded model, so
    personas on the same base switch by swapping adapters (tens of ms) instead
    of reloading the base.

    Besides generating, the worker *prefills*: while the person types, it
    evaluates the prompt as it will be at submit, so that on submit only the
    last few tokens remain. Prompts are token lists; the KV cache keeps the
    longest prefix shared with the next prompt, so no turn is evaluated twice.
    """

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = 2048,
        n_threads: Optional[int] = None,
        n_batch: int = 64,
        seed: int = -1,
        mmap: Optional[bool] = None,
        kv_quant: bool = True,
        adapter: Optional[Path] = None,
    ):
        self.model_path = Path(model_path)
        self.adapter_path: Optional[Path] = Path(adapter) if adapter else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads or physical_cores()
        self.n_batch = n_batch
        self.seed = seed
        size = self.model_path.stat().st_size if self.model_path.is_file() else 0
        self.mmap = use_mmap(size) if mmap is None else mmap
        self.kv_quant = kv_quant
        self.chat_template: Optional[str] = None
        self.bos = ""
        self.eos = ""
        self.prefilled = 0  # tokens evaluated ahead of a submit
        self.shifted = 0  # cached tokens moved down instead of evaluated again
        self._end: set = set()  # the tokens a reply ends at, read at load
        self._jobs: queue.Queue[Optional[Callable[[], None]]] = queue.Queue()
        self._target: List[int] = []
        self._target_lock = threading.Lock()
        self._model: Optional[Model] = None
        self._ctx: Optional[Context] = None
        self._adapter = None  # the llama_adapter_lora_p applied now
        self._thread: Optional[threading.Thread] = None
        self.busy_since: Optional[float] = None  # when the job now running started
        self.progress_at = time.monotonic()  # the last sign of life from that job

    def start(self) -> Engine:
        """Load the model on the worker; raises EngineError if it cannot be loaded."""
        check_gguf(self.model_path)
        if self.adapter_path is not None:
            check_gguf(self.adapter_path)
        loaded: queue.Queue[Optional[BaseException]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, args=(loaded,), name="engine",
                                        daemon=True)
        self._thread.start()
        error = loaded.get()
        if error is not None:
            self._thread.join()
            reason = str(error) or type(error).__name__  # MemoryError() says nothing
            raise EngineError(f"could not load {self.model_path}: {reason}") from error
        return self

    def _work(self, loaded: queue.Queue[Optional[BaseException]]) -> None:
        try:
            self._model = Model(self.model_path, self.mmap)
            self._ctx = Context(self._model, self.n_ctx, self.n_batch, self.n_threads,
                                self.kv_quant)
            if self.adapter_path is not None:
                self._swap_adapter(self.adapter_path)
        except Exception as e:  # llama.cpp's refusals, as RuntimeError
            self._free()
            loaded.put(e)
            return
        model = self._model
        self.chat_template = model.chat_template
        self.bos = self._token_text(model.bos)
        self.eos = self._token_text(model.eos)
        self._end = self._end_of_turn()  # read once here, not on the first reply's clock
        # Never penalized: where a reply ends, and the line break (llama.cpp's penalize_nl).
        self._spare = frozenset(self._end | set(self.tokenize("\n")))
        loaded.put(None)
        while True:
            job = self._jobs.get()
            if job is None:
                break
            self.busy_since = self.progress_at = time.monotonic()
            job()
            self.busy_since = None
        self._free()

    def _free(self) -> None:
        if self._ctx is not None:
            self._swap_adapter(None)  # freed before its model: llama.cpp would free it again
            self._ctx.close()
            self._ctx = None
        if self._model is not None:
            self._model.close()
            self._model = None

    @property
    def loaded(self) -> bool:
        """The model is in memory (False once closed, or if it never loaded)."""
        return self._model is not None

    def _token_text(self, token: int) -> str:
        return token_text(self._model, token)

    # -- adapters -------------------------------------------------------------------------

    @property
    def base_sha256(self) -> str:
        """The loaded model file's sha256: personas with the same base share this engine."""
        from appliance.engine.bases import sha256_of

        return sha256_of(self.model_path)

    def use_adapter(self, path: Optional[Path]) -> None:
        """Apply another LoRA adapter (None: the bare base) and empty the cache.

        Runs on the worker, after whatever was asked before, and returns when
        done; the cache was computed with the old adapter, so nothing in it is
        kept. On failure the old adapter stays and EngineError says why.
        """
        if path is not None:
            check_gguf(Path(path))
        done: queue.Queue[Optional[BaseException]] = queue.Queue()

        def job() -> None:
            try:
                self._swap_adapter(Path(path) if path is not None else None)
                with self._target_lock:
                    self._target = []
                self._rewind(0)
                done.put(None)
            except Exception as e:  # noqa: BLE001 - handed to the caller
                done.put(e)

        self._jobs.put(job)
        error = done.get()
        if error is not None:
            raise EngineError(f"could not apply adapter {path}: {error}") from error

    def _swap_adapter(self, path: Optional[Path]) -> None:
        """On the worker: load the new adapter, set it, then free the old one."""
        lib = libllama.bindings()
        new = None
        if path is not None:
            libllama.begin()
            new = lib.llama_adapter_lora_init(self._model.ptr, str(path).encode())
            if not new:
                why = libllama.cause()
                raise RuntimeError(f"llama.cpp refused {path} as a LoRA adapter for "
                                   f"{self.model_path.name} (another base, or not an adapter)"
                                   + (f": {why}" if why else ""))
        if not self._ctx.set_adapter(new):
            if new:
                lib.llama_adapter_lora_free(new)
            raise RuntimeError(f"llama.cpp could not set the adapter {path}")
        if self._adapter:
            lib.llama_adapter_lora_free(self._adapter)
        self._adapter = new
        self.adapter_path = path

    # -- tokens ---------------------------------------------------------------------------

    def tokenize(self, text: str, bos: bool = False, special: bool = False) -> List[int]:
        """Token ids of text. Safe from any thread: it reads only the vocabulary.

        special: parse control tokens (`<|im_start|>`) in the text, as a chat template's own
        text needs; never for what a person typed or the model said.
        """
        return self._model.tokenize(text.encode("utf-8"), bos, special)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, bos=True))

    # -- prefill ----------------------------------------------------------------------------

    def prefill(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens ahead of time; the next prompt that starts with them skips them.

        Only the latest call counts: typing faster than the model evaluates
        never queues work, and a backspace just moves the target back.
        """
        with self._target_lock:
            self._target = list(tokens)
        self._jobs.put(self._prefill)

    def _rewind(self, n: int) -> None:
        """Forget the cache beyond n tokens."""
        self._ctx.rewind(n)

    def _prefill(self) -> None:
        while True:
            with self._target_lock:
                target = self._target
            evaluated = self._evaluate(target, PREFILL_CHUNK)
            self.prefilled += evaluated
            if not evaluated or not self._jobs.empty():  # a submit or a newer target first
                return

    def _reuse(self, target: Sequence[int]) -> int:
        """Keep what of the cache target can use, forget the rest; returns the tokens kept.

        That is the common prefix, and, when the cache goes on with a block the target
        lacks and then what the target has (the conversation dropped its oldest
        exchanges after the frame), the rest too: the block is removed from llama.cpp's
        KV memory and what followed it shifted down, as llama.cpp's own context shift
        does. The kept turns' cache then still reflects the dropped exchange they once
        followed; the reply is not token-for-token what a fresh evaluation would give.
        """
        context = self._ctx
        cached = context.tokens
        keep = common_prefix(cached, target)
        rest = len(cached) - keep
        if rest >= SHIFT_MIN and len(target) - keep >= SHIFT_MIN:
            want = target[keep : keep + rest]
            start, run = 0, 0
            for j in range(keep + 1, len(cached)):
                if cached[j] == want[0]:
                    length = common_prefix(cached[j:], want)
                    if length > run:
                        start, run = j, length
            if run >= SHIFT_MIN:
                self.shifted += start - keep
                context.drop(keep, start)
                keep += run
        if keep < len(context.tokens):
            self._rewind(keep)
        return keep

    def _evaluate(self, target: Sequence[int], chunk: int) -> int:
        """Bring the cache one chunk closer to target (rewinding what differs); returns the
        tokens evaluated, 0 when the cache already holds target (or it cannot fit)."""
        keep = self._reuse(target)
        if keep >= len(target) or len(target) >= self.n_ctx:
            return 0
        piece = target[keep : keep + chunk]
        self._ctx.decode(piece)
        self.progress_at = time.monotonic()
        return len(piece)

    @property
    def context_tokens(self) -> int:
        """Tokens in the model's cache now: the conversation so far, and as much of the
        message being typed as prefill has evaluated. One int read: safe from any thread."""
        context = self._ctx
        return len(context.tokens) if context is not None else 0

    def stalled(self, after: float) -> bool:
        """A job has run for `after` seconds without a token or a chunk: the worker hangs."""
        return self.busy_since is not None and time.monotonic() - self.progress_at > after

    def settle(self) -> None:
        """Wait until the worker has done everything asked of it so far (prefill included)."""
        done = threading.Event()
        self._jobs.put(done.set)
        done.wait()

    # -- generation ---------------------------------------------------------------------------

    def generate(self, prompt: Union[str, Sequence[int]], stops: Sequence[str],
                 sampling: Sampling,
                 listener: Optional[Callable[[Reply, Optional[str]], None]] = None) -> Reply:
        """Start generating a reply; returns at once with a Reply to stream.

        prompt is text (tokenized with BOS) or the exact token list. Without a
        listener, iterate the Reply; with one, it receives each piece and then None.
        """
        reply = Reply(listener=listener)
        tokens = self.tokenize(prompt, bos=True) if isinstance(prompt, str) else list(prompt)
        with self._target_lock:  # prefill still queued now works toward this very prompt
            self._target = tokens
        self._jobs.put(lambda: self._generate(reply, tokens, list(stops), sampling))
        return reply

    def _generate(self, reply: Reply, tokens: List[int], stops: list, sampling: Sampling) -> None:
        context, model, sampler = self._ctx, self._model, None
        try:
            reply.prompt_tokens = len(tokens)
            reply.evaluated = len(tokens) - self._reuse(tokens)
            room = self.n_ctx - len(tokens)
            if room <= 0:
                raise EngineError(
                    f"the prompt ({len(tokens)} tokens) does not fit the context ({self.n_ctx})"
                )
            limit = min(sampling.max_tokens, room)
            # All but the last token in chunks, each a sign of life for the watchdog.
            while self._evaluate(tokens[:-1], PROMPT_CHUNK):
                if reply.cancelled.is_set():
                    break
            stop = StopFilter(stops)
            joiner = Utf8Joiner()
            end = self._end
            reply.stop_reason = "length"
            sampler = Sampler(model.n_vocab, sampling.temperature, sampling.top_k, sampling.top_p,
                              sampling.repeat_penalty, PENALTY_LAST_N,
                              self.seed if self.seed >= 0 else DEFAULT_SEED,
                              tokens[-PENALTY_LAST_N:], self._spare)
            if not reply.cancelled.is_set():
                context.decode(tokens[len(context.tokens):])
            while True:
                if reply.cancelled.is_set():
                    reply.stop_reason = "cancelled"
                    break
                token = sampler.sample(context)
                if not reply.sampled:
                    reply.first_token_at = time.perf_counter()
                if token in end:
                    reply.stop_reason = "eos"
                    break
                reply.sampled.append(token)
                self.progress_at = time.monotonic()
                out = stop.feed(joiner.feed(model.piece(token)))
                if out:
                    reply.emit(out)
                if stop.stopped:
                    reply.stop_reason = "stop"
                    reply.stopped_at = stop.stopped_at
                    reply.overshoot = stop.overshoot
                    break
                if reply.tokens >= limit:
                    break
                context.decode((token,))
            if reply.stop_reason in ("length", "eos"):
                tail = stop.feed(joiner.feed(b"")) + stop.finish()
                if tail:
                    reply.emit(tail)
        except Exception as e:
            reply.error = e
        finally:
            if sampler is not None:
                sampler.close()
            reply.done_at = time.perf_counter()
            reply.emit(None)

    def _end_of_turn(self) -> set:
        """The tokens a reply ends at: end-of-generation and every control token (a chat
        model that samples `<|im_start|>` has begun another turn), from the GGUF's vocabulary.
        None of them is ever printed."""
        model = self._model
        end = {t for t in range(model.n_vocab) if model.is_end(t)}
        end.discard(model.bos)
        return end | {t for t in (model.eos, model.eot) if t >= 0}

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
