"""A persona on its real base, side by side in one run: what the adapter costs, what a
switch costs, Q4_1 against Q4_0, and the pace against the typewriter's (`typewriter bench
persona`; results in docs/benchmarks.md).

Each figure is measured in rounds that take turns between the things compared, so the
shared machine's drift lands on both sides of every ratio.
"""

from __future__ import annotations

import ctypes
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Dict, List

from appliance.bench.end_to_end import TYPEWRITER_CPS
from appliance.engine.worker import Engine, Sampling, token_text
from appliance.persona.spec import Persona, make_frame, tokens_of

MESSAGES = ["Good morrow. Who art thou?", "What news from the town?",
            "Pray, what do they call you, lady?", "Where are you going tonight?",
            "Do you love Romeo?", "Tell me what you fear."]


def requantized(base: Path, quant: str, folder: Path) -> Path:
    """The base requantized by llama.cpp (Q4_1 -> Q4_0 here: llama.cpp repacks Q4_0, not
    Q4_1, for ARM's dot-product kernels). Requantizing loses a little more than quantizing
    from f16 would; the NLL figures say how much."""
    import llama_cpp

    from appliance.engine.synth import QUANTS, quiet_llama

    out = folder / f"{base.stem}.{quant}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, QUANTS[quant])
        params.allow_requantize = True
        with quiet_llama():
            rc = llama_cpp.llama_model_quantize(str(base).encode(), str(out).encode(),
                                                ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not requantize {base} to {quant} ({rc})")
    return out


def _decode_rate(engine: Engine, prompt: List[int], tokens: int) -> float:
    reply = engine.generate(prompt, stops=[], sampling=Sampling(
        max_tokens=tokens, temperature=1.0, top_p=1.0, top_k=0))
    reply.text()
    if reply.tokens < 8:
        return math.nan
    return (reply.tokens - 1) / (reply.done_at - reply.first_token_at)


def held_out_nll(model: Path, adapter: Path, persona: Persona, dialogue: Path,
                 character: str, threads: int) -> float:
    """NLL per reply token of the character's held-out answers (every 5th, as the build
    holds them out) in the persona's frame, computed by llama.cpp itself."""
    import numpy as np
    from llama_cpp import Llama

    from appliance.engine.synth import quiet_llama
    from appliance.persona.build import dialogue as dialogue_file
    from appliance.persona.build import examples as ex

    with quiet_llama():  # a line per adapter tensor otherwise
        llm = Llama(str(model), lora_path=str(adapter) if adapter else None, n_ctx=512,
                    n_threads=threads, logits_all=True, verbose=False)
    try:
        frame = make_frame(persona, llm.metadata.get("tokenizer.chat_template"),
                           token_text(llm, llm.token_bos()), token_text(llm, llm.token_eos()))
        conversation = ex.turns(dialogue_file.read(dialogue), character)
        test = ex.held_out(conversation, 5)

        def tokenize(text: str, bos: bool, special: bool = False) -> List[int]:
            return llm.tokenize(text.encode(), add_bos=bos, special=special)

        held = ex.reply_examples(conversation, frame, tokenize, llm.token_eos(), 3, 192,
                                 only=lambda i: i in test)
        total, count = 0.0, 0
        for example in held:
            llm.reset()
            llm.eval(example.ids)
            logits = np.asarray(llm.scores[: len(example.ids)], dtype=np.float64)
            for pos in range(1, len(example.ids)):
                if example.labels[pos] == ex.IGNORE:
                    continue
                row = logits[pos - 1]
                top = row.max()
                log_z = top + math.log(np.exp(row - top).sum())
                total += log_z - row[example.ids[pos]]
                count += 1
        return float(total / max(1, count))
    finally:
        llm.close()


def persona_bench(folder: Path, threads: int, rounds: int, dialogue: Path, character: str,
                  work: Path, out: Path) -> Dict:
    persona = Persona.load(folder)
    if persona.adapter_path is None:
        raise ValueError(f"{folder} is not an adapter persona: nothing to compare")
    base, adapter = persona.model_path, persona.adapter_path
    work.mkdir(parents=True, exist_ok=True)
    q4_0 = requantized(base, "q4_0", work)
    engines = {
        "base": Engine(base, n_ctx=1024, n_threads=threads, seed=1).start(),
        "adapter": Engine(base, n_ctx=1024, n_threads=threads, seed=1,
                          adapter=adapter).start(),
        "q4_0_adapter": Engine(q4_0, n_ctx=1024, n_threads=threads, seed=1,
                               adapter=adapter).start(),
    }
    rates: Dict[str, List[float]] = {name: [] for name in engines}
    swap_ms: List[float] = []
    reload_ms: List[float] = []
    chars: List[int] = []
    reply_tokens: List[int] = []
    try:
        first = engines["adapter"]
        frame = make_frame(persona, first.chat_template, first.bos, first.eos)

        def prompt_of(message: str) -> List[int]:
            return tokens_of(first.tokenize, frame.segments([], message))

        prompt = prompt_of(MESSAGES[0])
        for engine in engines.values():  # untimed: the first decode after a load is slow
            _decode_rate(engine, prompt, 16)
        for _ in range(rounds):
            for name, engine in engines.items():
                rates[name].append(_decode_rate(engine, prompt, 48))
            # A switch between personas on one base: a new adapter on the loaded model.
            engine = engines["adapter"]
            started = time.perf_counter()
            engine.use_adapter(None)
            engine.use_adapter(adapter)
            swap_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            Engine(base, n_ctx=1024, n_threads=threads, seed=1, adapter=adapter).start().close()
            reload_ms.append((time.perf_counter() - started) * 1000)
        for message in MESSAGES:  # her own replies, at her own settings: the pace on paper
            reply = first.generate(prompt_of(message), frame.stops, persona.generation)
            chars.append(len(reply.text().strip()))
            reply_tokens.append(reply.tokens)
    finally:
        for engine in engines.values():
            engine.close()
    nll = {name: round(held_out_nll(model, adapter, persona, dialogue, character, threads), 3)
           for name, model in (("q4_1_adapter", base), ("q4_0_adapter", q4_0))}
    nll["q4_1_base_alone"] = round(held_out_nll(base, None, persona, dialogue, character,
                                                threads), 3)
    median = {name: statistics.median([r for r in values if not math.isnan(r)])
              for name, values in rates.items()}

    def paired(name: str, against: str) -> float:
        """The median of each round's ratio: both sides of a pair ran moments apart."""
        return statistics.median([a / b for a, b in zip(rates[name], rates[against])
                                  if not (math.isnan(a) or math.isnan(b))])

    chars_per_token = sum(chars) / max(1, sum(reply_tokens))
    result = {
        "persona": persona.name, "base": base.name, "adapter_mb": round(
            adapter.stat().st_size / 1e6, 2), "threads": threads, "rounds": rounds,
        "machine": platform.machine(),
        "decode_tps": {name: round(v, 1) for name, v in median.items()},
        "decode_tps_rounds": {name: [round(r, 1) for r in v] for name, v in rates.items()},
        # Same shapes and quantization as the base: a merged model decodes as the base does.
        "adapter_vs_merged_decode": round(paired("adapter", "base"), 3),
        "q4_0_vs_q4_1_decode": round(paired("q4_0_adapter", "adapter"), 3),
        "held_out_nll": nll,
        "adapter_swap_ms": round(statistics.median(swap_ms), 1),
        "full_reload_ms": round(statistics.median(reload_ms), 1),
        "reply_chars_per_token": round(chars_per_token, 2),
        "chars_per_s": round(median["adapter"] * chars_per_token, 1),
        "vs_typewriter": round(median["adapter"] * chars_per_token / TYPEWRITER_CPS, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result
