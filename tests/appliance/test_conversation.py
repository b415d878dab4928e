"""The conversation keeps the frame and drops the oldest exchanges to fit."""

from appliance.conversation import Conversation


class Frame:
    """The smallest frame: one line per turn, as the dialogue frame renders."""

    def render(self, history, message):
        lines = [f"{role}: {text}" for role, text in history] + [f"user: {message}", "character:"]
        return "FRAME\n" + "\n".join(lines)


def words(text):
    return len(text.split())


def test_history_is_kept_while_it_fits():
    c = Conversation(Frame(), words, budget=100)
    c.add("hello", "good morrow")
    assert "user: hello" in c.prompt("again")
    assert c.last_reply == "good morrow"


def test_oldest_exchanges_are_dropped_first_and_frame_stays():
    c = Conversation(Frame(), words, budget=12)
    for i in range(5):
        c.add(f"message {i}", f"reply {i}")
    prompt = c.prompt("now")
    assert prompt.startswith("FRAME")
    assert words(prompt) <= 12
    assert "message 4" in prompt and "message 0" not in prompt


def test_a_message_too_long_for_the_budget_still_gets_a_prompt():
    c = Conversation(Frame(), words, budget=3)
    c.add("a", "b")
    assert c.prompt("far too many words for this budget").endswith("character:")
    assert c.history == []


def test_reset_forgets_everything():
    c = Conversation(Frame(), words, budget=100)
    c.add("a", "b")
    c.reset()
    assert c.last_reply == "" and c.history == []
