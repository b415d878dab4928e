"""Token-level conversation and prefill, on the real engine."""

import pytest

from appliance.core.conversation import HOLD_BACK, Conversation
from appliance.engine.worker import Engine, Reply, Sampling
from appliance.persona.spec import DialogueFrame, Example, FrameConfig

FRAME = DialogueFrame(FrameConfig(
    user_label="ROMEO", character_label="JULIET", preamble="A conversation in Verona.",
    examples=(Example("Who is there?", "A friend."),),
))
GREEDY = Sampling(max_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model):
    e = Engine(tiny_model, n_ctx=512, n_threads=2, seed=1).start()
    yield e
    e.close()


def type_into(engine, conversation, keys):
    """Prefill as a person types keys ("<" is a backspace)."""
    text = ""
    for ch in keys:
        text = text[:-1] if ch == "<" else text + ch
        engine.prefill(conversation.typing_tokens(text))
    engine.settle()
    return text


def test_prefill_backspace_submit_equals_evaluating_from_scratch(tiny_model, engine):
    conv = Conversation(FRAME, engine.tokenize, 512, 8)
    message = type_into(engine, conv, "What lightt< through yonder windo<ow breaks?")
    assert message == "What light through yonder window breaks?"
    assert engine.prefilled > 0
    tokens = conv.prompt_tokens(message)
    warm = engine.generate(tokens, [], GREEDY)
    warm.text()
    assert warm.evaluated <= HOLD_BACK + 6, "on submit only the last tokens and label remain"

    cold_engine = Engine(tiny_model, n_ctx=512, n_threads=2, seed=1).start()
    try:
        scratch = FRAME.head + FRAME.turn(message)
        assert cold_engine.tokenize(scratch, True) == tokens
        cold = cold_engine.generate(scratch, [], GREEDY)
        cold.text()
    finally:
        cold_engine.close()
    assert cold.evaluated == len(tokens)
    assert warm.sampled[0] == cold.sampled[0]


def test_history_is_kept_as_the_sampled_tokens(engine):
    conv = Conversation(FRAME, engine.tokenize, 512, 8)
    tokens = conv.prompt_tokens("Hello")
    reply = Reply(sampled=[11, 12, engine.tokenize("\n")[0]], stop_reason="stop", stopped_at="\n")
    conv.add("Hello", "sampled words", reply)
    assert conv.exchanges[0].tokens == tokens[len(conv.head):] + reply.sampled
    assert conv.prompt_tokens("Again")[: len(tokens) + 3] == tokens + reply.sampled
    assert conv.history == [("user", "Hello"), ("character", "sampled words")]


def test_a_reply_cut_short_still_ends_its_line(engine):
    conv = Conversation(FRAME, engine.tokenize, 512, 8)
    conv.prompt_tokens("Hello")
    conv.add("Hello", "half a", Reply(sampled=[5, 6], stop_reason="length"))
    assert conv.exchanges[0].tokens[-len(engine.tokenize(" half a\n")):] == engine.tokenize(
        " half a\n")


def test_fifty_turns_in_a_small_context_keep_the_frame(engine):
    n_ctx = 256
    conv = Conversation(FRAME, engine.tokenize, n_ctx, 24)
    shifted, costs = engine.shifted, []
    for i in range(50):
        message = f"Turn {i}: tell me of the moon and the stars over the orchard wall."
        before = engine.prefilled
        type_into(engine, conv, message[:20])
        tokens = conv.prompt_tokens(message)
        assert tokens[: len(conv.head)] == conv.head, "the persona frame is always there"
        assert len(tokens) + 24 <= n_ctx
        reply = engine.generate(tokens, ["\n"], Sampling(max_tokens=24, temperature=1.0))
        conv.add(message, reply.text().strip(), reply)
        costs.append((engine.prefilled - before + reply.evaluated, len(tokens) - len(conv.head)))
    assert 0 < len(conv.exchanges) < 50
    assert conv.exchanges[-1].message.startswith("Turn 49")
    # Once full, each turn drops the oldest exchange: the rest is shifted, not evaluated again.
    assert engine.shifted > shifted
    assert all(evaluated < after_frame / 2 for evaluated, after_frame in costs[-10:]), costs


def test_a_message_longer_than_the_context_is_cut_not_refused(engine):
    conv = Conversation(FRAME, engine.tokenize, 256, 24)
    tokens = conv.prompt_tokens("word " * 400 + "the end")
    assert len(tokens) + 24 <= 256
    assert tokens[: len(conv.head)] == conv.head, "the frame stays"
    tail = engine._model.detokenize(tokens[-12:]).decode()
    assert tail.endswith("word the end\nJULIET:"), "the message keeps its end, then the label"
    reply = engine.generate(tokens, ["\n"], Sampling(max_tokens=24))
    reply.text()
    assert reply.error is None and reply.stop_reason in ("stop", "length", "eos")
    assert reply.tokens > 0


def test_a_submit_right_after_typing_keeps_what_was_prefilled(engine):
    conv = Conversation(FRAME, engine.tokenize, 512, 8)
    engine.prefill(conv.typing_tokens(""))
    engine.settle()
    message = "Is it the east, and Juliet the sun?"
    for i in range(1, len(message) + 1):
        engine.prefill(conv.typing_tokens(message[:i]))
    reply = engine.generate(conv.prompt_tokens(message), [], GREEDY)  # no settle between
    reply.text()
    turn = engine.tokenize(FRAME.turn(message))
    assert reply.evaluated <= len(turn), "the frame must never be evaluated again"
