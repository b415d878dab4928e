"""Benchmarks: measured, not asserted.

`typewriter model bench` (`model_speed`): for each model, load time, prompt and
decode speed, characters per token on English text, and the resulting
characters per second beside what the typewriter can print.

`typewriter bench` (`end_to_end`): the whole appliance against a simulated
typewriter over a pty, a person typing at a steady rate: time from submit to
the first reply byte on the wire with prefill and without, side by side in
one run; decode speed in the appliance against a bare llama-cpp-python loop
(reply by reply: the bare loop decodes at each reply's prompt length just
before the Return that submits it and again after it has printed, and each
reply is divided by the mean of its two twins); memory beyond the model; how
long the printer waits for text mid-reply; and how soon a reply's first
sentence is spoken once complete. The prefill run prints only (the appliance
as most are built: its decode speed and memory are the ones held to the
bars); the evaluate-on-submit run also speaks, into WAV files, and its
decode speed is reported beside. With a persona (`typewriter bench --persona`)
the appliance runs that persona, adapter and all, and the bare loop loads the
same base and adapter; its replies are the persona's own, so each twin decodes
as many tokens as the reply it is paired with did (the one before the Return,
as many as the previous reply).
"""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from appliance.engine.synth import held_out_text
from appliance.engine.worker import Engine, Sampling

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
        english = held_out_text()[-4000:]
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


def model_speed(models: List[Path], threads: int, out: Path) -> List[Dict[str, float]]:
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


# -- end to end ---------------------------------------------------------------------------

# Five messages of about 40 tokens each, as a person would type them.
MESSAGES = [
    "Good evening, fair lady. I have walked all night beneath the orchard wall to find "
    "your window, and now that I have found it I hardly know what to say; will you tell "
    "me who you are?",
    "They say your house and mine are bitter enemies, yet I cannot believe that a name "
    "alone should keep two honest hearts apart when neither of them has done the other "
    "any harm.",
    "Tell me what you would have me do, and I will do it, whether it be to stay here "
    "beneath your window until the morning comes or to leave quietly before the lark "
    "begins to sing.",
    "The moon is bright upon the garden and the air is growing cold; do you not fear "
    "that someone in your father's house will wake and hear the two of us speaking here "
    "so late?",
    "If I return tomorrow at this same hour, when the house is dark and the servants are "
    "asleep, will you come again to the window and speak with me a little longer than "
    "tonight?",
]
# The bench model says this to everything (about 60 tokens: long enough for a decode
# speed to mean something on a noisy machine, short enough to print in 20 s), and a
# scripted model costs llama.cpp exactly what a random one of its shape does.
REPLY_SCRIPT = ("Fair friend, the night is young and sweet; stay a little while beneath my "
                "window and tell me of the stars above Verona. My nurse sleeps soundly below "
                "us now so speak in whispers of your hopes and I shall listen until dawn "
                "breaks over orchard walls!\nROMEO:")



def _peak_rss_mb(pid: int) -> float:
    """The kernel's high-water mark of a process's resident memory."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _bench_persona(folder: Path, model: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "persona.toml").write_text(f"""\
name = "Juliet"
model = {json.dumps(str(model))}
[frame]
user_label = "ROMEO"
character_label = "JULIET"
preamble = "Juliet speaks with a visitor at her window in Verona."
[[frame.examples]]
user = "Who is there?"
character = "A friend of the night."
[generation]
max_tokens = 80
temperature = 0.0
""")
    return folder


def _conversation(persona: Path, threads: int, prefill: bool, rate: float, cps: float,
                  messages: List[str], speak: bool, bare: BareLoop,
                  lengths: Optional[List[int]] = None) -> Dict[str, list]:
    """Type the messages into a real `typewriter run` process; time what comes back.

    The appliance runs as it does on the Pi, in its own process, so its memory
    is its own and the simulated typewriter (the bench's process, standing in
    for the microcontroller) does not share its interpreter. `lengths` are the
    replies' prompt lengths when the appliance cannot tell them before submit
    (without prefill its cache still holds the previous turn).
    """
    import subprocess
    import sys
    import tempfile

    from appliance.system.control import request, wait_for
    from firmware_bridge.board import messages as m
    from firmware_bridge.host.simulator import SimulatedTypewriter

    sim = SimulatedTypewriter(cps=cps, cr_seconds=0.5, record=True)
    port = sim.start()
    ttft, idle, evaluated, decode, prompts, cached = [], [], [], [], [], []
    before: List[float] = []
    after: List[float] = []
    tokens: Optional[int] = None  # the last reply's, for the twin before the next Return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # This machine's own config stays out of it; speech goes to WAV files, as the
        # bench machine may have no sound card.
        (folder / "config.toml").write_text(f'output = "both"\nspeech_files = '
                                            f'"{folder / "speech"}"\n' if speak else "")
        sock = folder / "control.sock"
        command = [sys.executable, "-m", "appliance.cli", "run", "--port", port,
                   "--persona", str(persona),
                   "--config", str(folder / "config.toml"), "--ctx", "1024",
                   "--threads", str(threads), "--state-dir", str(folder / "state"),
                   "--control", str(sock), "--personas", str(folder / "personas")]
        app = subprocess.Popen(command + ([] if prefill else ["--no-prefill"]),
                               stderr=subprocess.PIPE, text=True)

        def status() -> dict:
            return request(sock, {"command": "status"})

        try:
            if not wait_for(lambda: sock.exists() and status()["link"] == "up", 120):
                raise RuntimeError(f"the appliance did not start: {app.stderr.read()[-500:]}")
            time.sleep(1.0)  # the persona's frame is evaluated at start
            for i, message in enumerate(messages):
                sim.type_text(message + "\n", cps=rate)
                if lengths is None:
                    cached.append(_settled_context(status))
                length = cached[-1] if lengths is None else lengths[i]
                # The twin decodes just before the Return, while the appliance waits for
                # it, so the reply that follows starts on cores as busy as the twin's.
                twin = bare.decode(length, tokens=tokens)
                submitted = time.monotonic()
                sim.press(m.KEY_RETURN)
                # Asked 4 times a second, not 20: each question wakes the appliance's
                # threads, which would take cores from the reply being measured.
                # Replies, not exchanges: the conversation drops its oldest exchanges
                # once the context is full.
                if not wait_for(lambda n=i: status()["replies"] > n, 300, every=0.25):
                    raise RuntimeError("no reply within 300 s")
                sim.wait_printed(300)
                stats = status()["last_reply_stats"]
                first = next(t for t, _ in sim.received if t >= submitted)
                ttft.append(first - submitted)
                idle.append(_printer_idle(sim, submitted, cps, 0.5))
                evaluated.append(stats["evaluated_at_submit"])
                prompts.append(stats["prompt_tokens"])
                if stats["decode_tps"]:  # None for a reply of a single token
                    decode.append(stats["decode_tps"])
                    before.append(twin)
                    after.append(bare.decode(stats["prompt_tokens"], tokens=stats["tokens"]))
                    tokens = stats["tokens"]
            peak = _peak_rss_mb(app.pid)
            speech = status()["speech_start_s"]
        finally:
            app.terminate()
            app.wait(30)
            sim.stop()
    return {"ttft": ttft, "idle": idle, "decode": decode, "before": before, "after": after,
            "evaluated": evaluated, "prompt_tokens": prompts, "cached": cached, "peak_rss_mb": peak,
            "speech": speech}


def _settled_context(status: Callable[[], dict]) -> int:
    """The appliance's cached tokens once prefill has caught up with the last key."""
    from appliance.system.control import wait_for

    seen = [-1]

    def settled() -> bool:  # unchanged since the last look, a quarter second ago
        now = status()["context_tokens"]
        same = now == seen[0]
        seen[0] = now
        return same

    if not wait_for(settled, 60, every=0.25):
        raise RuntimeError("the appliance's prefill did not settle within 60 s")
    return seen[0]


def _printer_idle(sim, since: float, cps: float, cr_seconds: float) -> float:
    """Seconds the mechanism stood waiting for text between a reply's first and last byte."""
    struck = [(t, b) for t, b in sim.struck if t >= since]
    idle = 0.0
    for (t0, b0), (t1, _) in zip(struck, struck[1:]):
        busy = cr_seconds if b0 == 0x0A else 1.0 / cps
        idle += max(0.0, t1 - t0 - busy - 0.02)  # 20 ms: the simulator's own polling
    return idle


_bare: Dict[str, object] = {}  # in the bare loop's own process: the model and the text


def _bare_load(model: Path, threads: int, mmap: bool, adapter: Optional[Path]) -> None:
    import llama_cpp

    # The engine's context: 64-token batches, a Q8_0 KV cache (which needs flash attention).
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=1024, n_threads=threads, n_batch=64,
                          n_ubatch=64, use_mmap=mmap, verbose=False, seed=1,
                          lora_path=str(adapter) if adapter else None, flash_attn=True,
                          type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0)
    _bare["llm"] = llm
    # Longer than any prompt the appliance's 1024-token context can hold.
    _bare["text"] = llm.tokenize((PROMPT + " ".join(MESSAGES) * 8).encode(), add_bos=True)
    _bare["tokens"] = len(llm.tokenize(REPLY_SCRIPT.split("\n")[0].encode(), add_bos=False))


def _bare_decode(length: int, pause: float = 0.0, tokens: Optional[int] = None) -> float:
    """Decode tokens/s of a plain llama-cpp-python loop right after a prompt of `length`.

    Decoding slows as the context grows (here 55 tok/s after 64 tokens, 45
    after 448), so it is measured at each reply's own prompt length. The prompt
    is evaluated from scratch, keeping the cores busy until decoding starts;
    with a pause, all but its last token is evaluated first and the cores then
    sit idle for `pause` seconds, as after a message prefilled while typed.
    """
    llm, text = _bare["llm"], _bare["text"]
    tokens = max(2, tokens or _bare["tokens"])
    llm.reset()
    if pause:
        llm.eval(text[:length - 1])
        time.sleep(pause)
    stamps: List[float] = []
    for _ in llm.generate(text[:length], temp=0.0, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) >= tokens:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


class BareLoop:
    """The appliance's ceiling: the same model, threads and cache in a plain loop.

    It runs in a process of its own, like the appliance, and decodes next to
    each of the appliance's replies, at that reply's prompt length: the
    machine's drift (it is shared) then shows in both sides of each pair
    instead of between two runs minutes apart.
    """

    def __init__(self, model: Path, threads: int, mmap: bool, adapter: Optional[Path] = None):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self._pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"),
                                         initializer=_bare_load,
                                         initargs=(model, threads, mmap, adapter))

    def decode(self, length: int, pause: float = 0.0, tokens: Optional[int] = None) -> float:
        return self._pool.submit(_bare_decode, length, pause, tokens).result()

    def close(self) -> None:
        self._pool.shutdown()


def _paired_ratio(run: Dict[str, list]) -> float:
    """The median over replies of each reply's speed over the mean of its two twins."""
    from statistics import median

    return round(median(a / ((b + c) / 2) for a, b, c in
                        zip(run["decode"], run["before"], run["after"])), 3)


def _idle_penalty(bare: BareLoop, length: int, rounds: int = 4) -> float:
    """How much slower the bare loop decodes after an idle second than on busy cores.

    A machine's property, not the appliance's: a shared VM (or a CPU that
    clocks down) starts slow. With prefill the appliance decodes after the
    person's typing, which leaves the cores mostly idle, so this is what its
    replies pay on such a machine beyond the paired ratio.
    """
    from statistics import median

    ratios = []
    for _ in range(rounds):
        busy = bare.decode(length)
        ratios.append(bare.decode(length, pause=1.0) / busy)
    return round(median(ratios), 3)


def end_to_end(model: Path, shape: str, threads: int, rate: float = 5.0, cps: float = 12.0,
               exchanges: int = 5, out: Optional[Path] = None,
               persona: Optional[Path] = None) -> Dict[str, object]:
    """Prefill against evaluate-on-submit, through the simulated typewriter: the scripted
    bench model of a shape, or (`persona`) a real persona, whose base is then `model`."""
    import tempfile
    from statistics import median

    from appliance.persona.spec import Persona
    from appliance.system.memory import use_mmap

    messages = (MESSAGES * (exchanges // len(MESSAGES) + 1))[:exchanges]
    adapter = Persona.load(persona).adapter_path if persona is not None else None
    files = [model] + ([adapter] if adapter else [])
    mmap = use_mmap(sum(f.stat().st_size for f in files))
    bare = BareLoop(model, threads, mmap, adapter)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = persona or _bench_persona(Path(tmp) / "persona", model)
            with_prefill = _conversation(folder, threads, True, rate, cps, messages, False,
                                         bare)
            # The same script gives the same prompts, whose lengths the appliance without
            # prefill cannot tell before the Return.
            on_submit = _conversation(folder, threads, False, rate, cps, messages, True, bare,
                                      lengths=with_prefill["prompt_tokens"])
        idle_penalty = _idle_penalty(bare, int(median(with_prefill["prompt_tokens"])))
    finally:
        bare.close()
    engine = Engine(model, n_ctx=256, n_threads=1).start()
    try:
        message_tokens = [len(engine.tokenize(" " + msg)) for msg in messages]
    finally:
        engine.close()
    model_mb = sum(f.stat().st_size for f in files) / 2**20
    peak = with_prefill["peak_rss_mb"]
    result: Dict[str, object] = {
        "shape": shape,
        "adapter": adapter.name if adapter else None,
        "threads": threads,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "typing_cps": rate,
        "printer_cps": cps,
        "exchanges": exchanges,
        "message_tokens": message_tokens,
        "ttft_prefill_s": round(median(with_prefill["ttft"]), 3),
        "ttft_prefill_p95_s": round(_percentile(with_prefill["ttft"], 0.95), 3),
        "ttft_submit_s": round(median(on_submit["ttft"]), 3),
        "ttft_submit_p95_s": round(_percentile(on_submit["ttft"], 0.95), 3),
        "tokens_at_submit_prefill": with_prefill["evaluated"],
        "tokens_at_submit_no_prefill": on_submit["evaluated"],
        "reply_prompt_tokens": with_prefill["prompt_tokens"],
        # What the appliance had cached when the Return came: the whole prompt, if
        # prefill kept up (and the length the twin before the Return decoded at).
        "cached_before_return": with_prefill["cached"],
        "decode_tps_appliance": round(median(with_prefill["decode"]), 1),
        "decode_tps_appliance_speaking": round(median(on_submit["decode"]), 1),
        "decode_tps_bare": round(median(with_prefill["before"] + with_prefill["after"]), 1),
        "decode_tps_bare_before": [round(x, 1) for x in with_prefill["before"]],
        "decode_tps_bare_after": [round(x, 1) for x in with_prefill["after"]],
        "decode_tps_appliance_pairs": with_prefill["decode"],
        "rss_peak_mb": round(peak, 1),
        "rss_peak_speaking_mb": round(on_submit["peak_rss_mb"], 1),
        "model_file_mb": round(model_mb, 1),
        "rss_beyond_model_mb": round(peak - model_mb, 1),
        "mmap": mmap,
        "printer_idle_s": round(max(with_prefill["idle"]), 3),
    }
    # From a reply's first sentence being complete in the appliance to its sound starting.
    speech = on_submit["speech"]
    result["speech_start_s"] = round(median(speech), 3) if speech else None
    result["speech_start_max_s"] = max(speech) if speech else None
    # Each reply against its twins just before and after it, then the median of those ratios.
    result["decode_ratio"] = _paired_ratio(with_prefill)
    result["decode_ratio_speaking"] = _paired_ratio(on_submit)
    result["decode_idle_penalty"] = idle_penalty
    result["decode_step_s"] = round(1 / result["decode_tps_bare"], 4)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result
