"""`typewriter bench`: how fast a model answers on this machine, measured, not asserted.

For each model it measures load time, prompt evaluation and decoding speed
(tokens/s), the time from submit to the first reply token, and characters per
token on English text; and it sets the resulting characters per second beside
what the typewriter can print, which is the bar a reply has to keep up with.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path
from typing import Dict, List

from appliance.engine import Engine, Sampling
from appliance.model_synth import CORPUS

TYPEWRITER_CPS = 12.0  # a Brother AX-class typewriter's print speed

PROMPT = (
    "A conversation in Verona.\n\n"
    "ROMEO: What light through yonder window breaks?\n"
    "JULIET: It is the east, and I am but a lamp.\n"
    "ROMEO: Then tell me, gentle lady, what you dream of when the night is long "
    "and the candles have burned low in the chamber?\n"
    "JULIET:"
)


def measure(model: Path, threads: int, tokens: int = 64) -> Dict[str, float]:
    """One model: load time, prompt and decode speed, and what that means on paper."""
    started = time.perf_counter()
    engine = Engine(model, n_ctx=1024, n_threads=threads, seed=1).start()
    load_s = time.perf_counter() - started
    try:
        n_prompt = engine.count_tokens(PROMPT)
        english = CORPUS.read_text(encoding="utf-8")[-4000:]
        chars_per_token = len(english) / engine.count_tokens(english)
        sampling = Sampling(max_tokens=tokens, temperature=1.0, top_p=1.0, top_k=0)
        submitted = time.perf_counter()
        reply = engine.generate(PROMPT, stops=[], sampling=sampling)
        first = None
        for _ in reply:
            if first is None:
                first = time.perf_counter()
        done = time.perf_counter()
    finally:
        engine.close()
    first = first or done
    decode_tok_s = max(reply.tokens - 1, 1) / max(done - first, 1e-9)
    return {
        "model": model.name,
        "file_mb": round(model.stat().st_size / 1e6, 1),
        "load_s": round(load_s, 3),
        "prompt_tokens": n_prompt,
        # The first piece arrives after the whole prompt and one token were evaluated.
        "first_token_s": round(first - submitted, 3),
        "prompt_tok_s": round(n_prompt / (first - submitted), 1),
        "decode_tok_s": round(decode_tok_s, 1),
        "english_chars_per_token": round(chars_per_token, 2),
        "decode_chars_s": round(decode_tok_s * chars_per_token, 1),
        "vs_typewriter": round(decode_tok_s * chars_per_token / TYPEWRITER_CPS, 1),
    }


def run(models: List[Path], threads: int, out: Path) -> List[Dict[str, float]]:
    results = [measure(m, threads) for m in models]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": threads,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "typewriter_cps": TYPEWRITER_CPS,
        "results": results,
    }, indent=2) + "\n")
    return results
