"""The engine on real llama.cpp with the project's own synthetic models."""

import threading

import pytest

from appliance.engine.worker import Engine, EngineError, Sampling
from tests.conftest import SCRIPT_REPLY, wait_for

PROMPT = "A conversation.\n\nROMEO: Who goes there?\nJULIET:"
GREEDY = Sampling(max_tokens=80, temperature=0.0)


@pytest.fixture(scope="module")
def scripted(script_model):
    engine = Engine(script_model, n_ctx=512, n_threads=2).start()
    yield engine
    engine.close()


def test_streams_the_reply_and_stops_at_the_newline(scripted):
    reply = scripted.generate(PROMPT, stops=["\n"], sampling=GREEDY)
    pieces = list(reply)
    assert len(pieces) > 10, "the reply must stream, not arrive in one piece"
    assert "".join(pieces) == SCRIPT_REPLY
    assert reply.stop_reason == "stop"


def test_the_repeat_penalty_counts_the_prompt_as_llama_cpp_does(scripted):
    """A message's own words are penalised too, not only what the model said: without that a
    small model's first tokens copy the message ("What news?" -> "What news?")."""
    reply = scripted.generate(PROMPT, stops=["\n"], sampling=GREEDY)
    reply.text()
    first, second = reply.sampled[:2]  # the scripted model says `second` after `first`
    prompt = scripted.tokenize(PROMPT, True)
    tokens = prompt[:1] + [second] + prompt[1:] + [first]  # `second` among the last 64

    def next_token(penalty: float) -> int:
        again = scripted.generate(tokens, stops=[], sampling=Sampling(
            max_tokens=1, temperature=0.0, repeat_penalty=penalty))
        again.text()
        return again.sampled[0]

    assert next_token(1.0) == second
    assert next_token(1000.0) not in set(tokens[-64:])


def test_partial_stop_never_leaks(scripted):
    text = scripted.generate(PROMPT, stops=["\nROMEO:"], sampling=GREEDY).text()
    assert text == SCRIPT_REPLY


def test_reply_length_is_capped(scripted):
    reply = scripted.generate(PROMPT, stops=[], sampling=Sampling(max_tokens=5, temperature=0.0))
    text = reply.text()
    assert reply.tokens == 5 and reply.stop_reason == "length"
    assert SCRIPT_REPLY.startswith(text) and len(text) < 30


def test_cancel_stops_within_a_token(scripted):
    reply = scripted.generate(PROMPT, stops=[], sampling=Sampling(max_tokens=500, temperature=0))
    first = next(iter(reply))
    reply.cancel()
    at_cancel = reply.tokens
    list(reply)
    assert first
    assert reply.stop_reason == "cancelled"
    assert reply.tokens <= at_cancel + 1, "at most the token being sampled finishes"
    assert reply.tokens < 500
    again = scripted.generate(PROMPT, stops=["\n"], sampling=GREEDY).text()
    assert again == SCRIPT_REPLY, "the next reply after a cancel starts clean"


def test_a_prompt_longer_than_the_context_is_an_error_not_a_crash(scripted):
    reply = scripted.generate("word " * 2000, stops=[], sampling=GREEDY)
    with pytest.raises(EngineError, match="does not fit"):
        reply.text()
    assert scripted.generate(PROMPT, stops=["\n"], sampling=GREEDY).text() == SCRIPT_REPLY


def test_one_worker_serves_callers_from_many_threads(scripted):
    results = []

    def ask():
        results.append(scripted.generate(PROMPT, stops=["\n"], sampling=GREEDY).text())

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [SCRIPT_REPLY] * 3


def test_random_weight_model_generates_text(tiny_model):
    engine = Engine(tiny_model, n_ctx=256, n_threads=1, seed=3).start()
    try:
        reply = engine.generate(PROMPT, stops=[], sampling=Sampling(max_tokens=20))
        assert len(reply.text()) > 0 and reply.tokens > 0
        assert engine.eos == "</s>"
    finally:
        engine.close()


def test_a_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    with pytest.raises(EngineError, match="could not load"):
        Engine(bad).start()


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        Engine(tmp_path / "none.gguf").start()


def test_a_long_prompt_at_submit_is_evaluated_in_chunks_that_show_progress(script_model):
    """The watchdog restarts a worker that shows no progress for 30 s; a 1B model on a Pi 4
    evaluates ~11 tokens a second, so an uncached prompt (a full context, a restart, no
    prefill) must report progress as it goes, not only once the first token comes."""
    import time

    from appliance.engine import worker

    engine = Engine(script_model, n_ctx=512, n_threads=2).start()
    try:
        calls = []
        real_eval = engine._ctx.decode

        def watched(tokens):
            calls.append((len(tokens), engine.progress_at))
            real_eval(tokens)

        engine._ctx.decode = watched
        started = time.monotonic()
        prompt = engine.tokenize("word " * 300 + PROMPT, bos=True)
        reply = engine.generate(prompt, stops=["\n"], sampling=GREEDY)
        assert reply.text() == SCRIPT_REPLY
        assert reply.evaluated == len(prompt)
        sizes = [n for n, _ in calls]
        assert len(sizes) >= len(prompt) // worker.PROMPT_CHUNK
        assert max(sizes) <= worker.PROMPT_CHUNK
        marks = [at for _, at in calls[1:len(prompt) // worker.PROMPT_CHUNK]]
        assert all(at >= started for at in marks), "progress is reported after each chunk"
        assert marks == sorted(marks)
    finally:
        engine.close()


def test_a_dropped_exchange_is_shifted_out_of_the_cache_not_evaluated_again(script_model):
    """When the context fills, the conversation drops its oldest exchange after the frame;
    the turns after it stay in llama.cpp's KV memory, shifted down, and only the new turn
    is evaluated (before: everything after the frame, 849 tokens, 6-7 s here)."""
    from appliance.engine import worker

    engine = Engine(script_model, n_ctx=512, n_threads=2).start()
    try:
        words = engine.tokenize
        head = words("A conversation.\n\n", bos=True)
        old = words("ROMEO: " + "an old exchange that will be dropped " * 8)
        kept = words("ROMEO: " + "a later exchange that stays in the context " * 8)
        new = words("\nROMEO: Who goes there?\nJULIET:")
        assert len(old) >= worker.SHIFT_MIN and len(kept) >= worker.SHIFT_MIN
        engine.prefill(head + old + kept)
        assert wait_for(lambda: engine.context_tokens == len(head + old + kept), 30)
        before = engine.prefilled
        reply = engine.generate(head + kept + new, stops=["\n"], sampling=GREEDY)
        assert reply.text() == SCRIPT_REPLY
        assert engine.shifted == len(old)
        assert reply.evaluated == len(new), "only the new turn is evaluated"
        assert engine.prefilled == before
        cached = engine._ctx.tokens[: len(head + kept + new)]
        assert cached == head + kept + new
    finally:
        engine.close()
