"""`typewriter bench`: how fast a model answers on this machine, measured, not asserted.

For each model it measures load time, prompt evaluation and decoding speed
(tokens/s), characters per token, and the time from submit to the first
printable reply text; and it sets that beside what the typewriter can print
(characters per second), which is the bar a reply has to keep up with.
"""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path
from typing import Dict, List

from appliance.engine import Engine, Sampling

PROMPT = (
    "A conversation in Verona.\n\n"
    "ROMEO: What light through yonder window breaks?\n"
    "JULIET: It is the east, and I am but a lamp.\n"
    "ROMEO: Then tell me, gentle lady, what you dream of when the night is long "
    "and the candles have burned low in the chamber?\n"
    "JULIET:"
)


def measure(model: Path, threads: int, tokens: int = 64) -> Dict[str, float]:
    """One model: load, prompt and decode speed, and first text after submit."""
    started = time.perf_counter()
    engine = Engine(model, n_ctx=1024, n_threads=threads, seed=1).start()
    load_s = time.perf_counter() - started
    try:
        n_prompt = engine.count_tokens(PROMPT)
        sampling = Sampling(max_tokens=tokens, temperature=1.0, top_p=1.0, top_k=0)
        engine.count_tokens("warm up")
        submitted = time.perf_counter()
        reply = engine.generate(PROMPT, stops=[], sampling=sampling)
        first = None
        text = ""
        for piece in reply:
            if first is None and piece.strip():
                first = time.perf_counter()
            text += piece
        total = time.perf_counter() - submitted
        # A second run with a one-token reply separates prompt time from decode time.
        again = time.perf_counter()
        engine.generate(PROMPT + " ", stops=[], sampling=Sampling(max_tokens=1)).text()
        prompt_s = time.perf_counter() - again
    finally:
        engine.close()
    decode_s = max(total - prompt_s, 1e-9)
    return {
        "model": model.name,
        "file_mb": round(model.stat().st_size / 1e6, 1),
        "load_s": round(load_s, 3),
        "prompt_tokens": n_prompt,
        "prompt_tok_s": round(n_prompt / prompt_s, 1),
        "decode_tok_s": round(max(reply.tokens - 1, 1) / decode_s, 1),
        "reply_chars_per_token": round(len(text) / max(reply.tokens, 1), 2),
        "first_text_s": round((first or time.perf_counter()) - submitted, 3),
        "reply_chars_s": round(len(text) / total, 1),
    }


def run(models: List[Path], threads: int, out: Path) -> List[Dict[str, float]]:
    results = [measure(m, threads) for m in models]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": threads,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "typewriter_cps": 12,
        "results": results,
    }, indent=2) + "\n")
    return results
