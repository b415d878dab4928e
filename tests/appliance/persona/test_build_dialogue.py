"""Dialogue readers and training examples: what the persona builder learns from."""

from pathlib import Path

import pytest

from appliance.core.conversation import Conversation
from appliance.engine.worker import Reply
from appliance.persona.build import BuildError
from appliance.persona.build.dialogue import read
from appliance.persona.build.examples import (
    IDENTITY_QUESTIONS,
    IGNORE,
    character_frame,
    chat_examples,
    frame_examples,
    held_out,
    identity,
    pretraining_text,
    replay_text,
    replay_tokens,
    turns,
)
from appliance.persona.spec import ChatFrame, DialogueFrame

PLAY = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

JULIET:
Ay me! What news?
Why dost thou look so sad:

Nurse:
Ah, well-a-day!

Senators, &C:
Peace!

JULIET:
Tell me the worst.
"""

FOUNTAIN = """Title: The Lamp
Author: Someone

INT. KITCHEN - NIGHT

Ada lights a LAMP. It flickers.

ADA
(quietly)
Is anyone there?

BOB (O.S.)
Only me.
Only ever me.

[[a note that is not dialogue]]
ADA ^
Come in, then.

CUT TO:
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_play_format_joins_each_speech_and_counts_speakers(tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    assert script.format == "play"
    assert [s.speaker for s in script.speeches] == [
        "First Citizen", "All", "JULIET", "Nurse", "Senators, &C", "JULIET"]
    # A speech line ending in a colon is still speech: only a line after a blank is a cue.
    assert script.speeches[2].text == "Ay me! What news? Why dost thou look so sad:"
    assert script.speeches[2].line == 7
    assert script.counts()["JULIET"] == 2
    assert script.speaker("juliet") == "JULIET"


def test_one_line_format(tmp_path):
    script = read(write(tmp_path, "chat.txt", "ROMEO: Hello there.\n\nJULIET:   Who calls?\n"))
    assert script.format == "lines"
    assert [(s.speaker, s.text, s.line) for s in script.speeches] == [
        ("ROMEO", "Hello there.", 1), ("JULIET", "Who calls?", 3)]


def test_fountain_keeps_dialogue_only(tmp_path):
    script = read(write(tmp_path, "lamp.fountain", FOUNTAIN))
    assert script.format == "fountain"
    assert [(s.speaker, s.text) for s in script.speeches] == [
        ("ADA", "Is anyone there?"), ("BOB", "Only me. Only ever me."), ("ADA", "Come in, then.")]


def test_unknown_format_names_file_and_line(tmp_path):
    path = write(tmp_path, "notes.txt", "just some prose\nwith no speakers\n")
    with pytest.raises(BuildError, match=r"notes.txt:1: unknown dialogue format") as e:
        read(path)
    assert "\n" not in str(e.value)


def test_a_broken_play_names_the_line(tmp_path):
    path = write(tmp_path, "play.txt", "ROMEO:\nHello.\n\nthis line has no speaker\n")
    with pytest.raises(BuildError, match=r"play.txt:4: 'this line has no speaker' is not play"):
        read(path)


def test_a_character_with_no_lines_is_named_with_the_ones_that_have_some(tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    with pytest.raises(BuildError, match=r"'HAMLET' has no lines .*JULIET \(2\)"):
        script.speaker("HAMLET")


def test_other_speakers_become_one_user_turn(tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    assert turns(script, "JULIET") == [
        ("user", "Before we proceed any further, hear me speak. Speak, speak."),
        ("character", "Ay me! What news? Why dost thou look so sad:"),
        ("user", "Ah, well-a-day! Peace!"),
        ("character", "Tell me the worst."),
    ]
    assert pretraining_text(script).splitlines()[1] == "ALL: Speak, speak."


def fake_tokenize(text: str, bos: bool):
    """Characters as token ids: enough to see exactly which text lands where."""
    return ([1] if bos else []) + [ord(c) for c in text]


def test_examples_are_the_appliance_prompt_with_loss_on_the_reply_only(tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    frame = DialogueFrame(character_frame("JULIET", "Juliet", "VISITOR", "In Verona."))
    examples = frame_examples(turns(script, "JULIET"), frame, fake_tokenize, 3, 1000)
    assert len(examples) == 2
    second = examples[1]
    # What the appliance would send after the first exchange, built by its own Conversation.
    conversation = Conversation(frame, fake_tokenize, 4096, 60)
    first_reply = " Ay me! What news? Why dost thou look so sad:\n"
    conversation.add("Before we proceed any further, hear me speak. Speak, speak.",
                     first_reply.strip(), Reply(sampled=fake_tokenize(first_reply, False),
                                                stop_reason="stop", stopped_at="\n"))
    prompt = conversation.prompt_tokens("Ah, well-a-day! Peace!")
    assert second.ids[:len(prompt)] == prompt
    reply = "".join(chr(t) for t, label in zip(second.ids, second.labels) if label != IGNORE)
    assert reply == " Tell me the worst.\n"  # the end marker is learned too
    assert all(label == IGNORE for label in second.labels[:len(prompt)])


def test_long_examples_lose_context_not_the_head_or_the_reply(tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    frame = DialogueFrame(character_frame("JULIET", "Juliet", "VISITOR", "In Verona."))
    [ex] = frame_examples(turns(script, "JULIET")[1:], frame, fake_tokenize, 3, 60)
    text = "".join(chr(t) for t in ex.ids[1:])
    assert len(ex.ids) == 60 and text.startswith("In Verona.\n\n")
    assert text.endswith("JULIET: Tell me the worst.\n")


def test_identity_exchanges_all_name_the_character():
    pairs = identity("Juliet")
    answers = [text for role, text in pairs if role == "character"]
    assert len(answers) == len(pairs) // 2 >= 8
    assert all("Juliet" in a for a in answers)


def test_replay_speaks_only_the_frames_two_labels_whatever_the_script_calls_people(tmp_path):
    """Other speakers (First Citizen, All, Nurse, Senators) have their own names in the play;
    the replay windows must not teach the model to write them as labels."""
    script = read(write(tmp_path, "play.txt", PLAY))
    config = character_frame("JULIET", "Juliet", "VISITOR", "In Verona.")
    text = replay_text(turns(script, "JULIET"), config)
    labels = {line.split(":")[0] for line in text.splitlines()}
    assert labels == {"VISITOR", "JULIET"}
    assert text.splitlines()[2] == "VISITOR: Ah, well-a-day! Peace!"
    for name in ("Nurse", "NURSE", "ALL", "Citizen", "Senators"):
        assert f"{name}:" not in text


def test_held_out_answers_are_never_trained_on_nor_replayed(tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    conversation = turns(script, "JULIET")
    test = held_out(conversation, 2)
    assert test == {3}  # every second answer: "Tell me the worst."
    config = character_frame("JULIET", "Juliet", "VISITOR", "In Verona.")
    frame = DialogueFrame(config)
    train = frame_examples(conversation, frame, fake_tokenize, 3, 1000,
                           only=lambda i: i not in test)
    assert len(train) == 1
    assert "Tell me the worst." not in replay_text(conversation, config, test)


def test_the_checks_identity_questions_are_not_the_builders():
    """A persona that learned the builder's questions by rote must not pass the check for free."""
    from appliance.persona.check import NAME_QUESTIONS

    def words(q):
        return " ".join(q.lower().replace("?", "").replace(",", "").split())

    assert not {words(q) for q in NAME_QUESTIONS} & {words(q) for q in IDENTITY_QUESTIONS}
    assert "Pray, what do they call you, lady?" in NAME_QUESTIONS


# A ChatML-like template, as SmolLM2-Instruct's: its markers are one special token each.
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = {"<|im_start|>": 1000, "<|im_end|>": 1001}


def chat_tokenize(text: str, bos: bool, special: bool = False) -> list:
    """Characters as ids, the template's markers one id each, but only where parsed."""
    ids = [1] if bos else []
    while text:
        mark = next((m for m in SPECIAL if special and text.startswith(m)), None)
        ids.append(SPECIAL[mark] if mark else ord(text[0]))
        text = text[len(mark) if mark else 1:]
    return ids


def chat_text(ids) -> str:
    names = {v: k for k, v in SPECIAL.items()}
    return "".join(names.get(t, chr(t)) for t in ids if t != 1)


def chat_frame() -> ChatFrame:
    return ChatFrame(character_frame("JULIET", "Juliet", "VISITOR", "You are Juliet.", "chat"),
                     CHATML, "<s>", "<|im_end|>")


def test_chat_examples_are_the_appliance_chat_prompt_with_loss_on_reply_and_end_of_turn(
        tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    frame = chat_frame()
    examples = chat_examples(turns(script, "JULIET"), frame, chat_tokenize, 1001, 3, 1000)
    assert len(examples) == 2
    second = examples[1]
    # What the appliance would send after the first exchange, built by its own Conversation.
    conversation = Conversation(frame, chat_tokenize, 4096, 60)
    conversation.add("Before we proceed any further, hear me speak. Speak, speak.",
                     "Ay me! What news? Why dost thou look so sad:", Reply(stop_reason="eos"))
    prompt = conversation.prompt_tokens("Ah, well-a-day! Peace!")
    assert second.ids[:len(prompt)] == prompt
    assert all(label == IGNORE for label in second.labels[:len(prompt)])
    assert second.labels[len(prompt):] == chat_tokenize("Tell me the worst.", False) + [1001]
    assert chat_text(prompt).startswith("<|im_start|>system\nYou are Juliet.<|im_end|>")


def test_long_chat_examples_lose_whole_exchanges_not_the_system_line_or_the_reply(tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    conversation = turns(script, "JULIET")
    full = chat_examples(conversation, chat_frame(), chat_tokenize, 1001, 3, 1000)[-1]
    short = chat_examples(conversation, chat_frame(), chat_tokenize, 1001, 3,
                          len(full.ids) - 1)[-1]
    text = chat_text(short.ids)
    assert len(short.ids) < len(full.ids)
    assert text.startswith("<|im_start|>system\nYou are Juliet.<|im_end|>\n<|im_start|>user\n"
                           "Ah, well-a-day! Peace!")  # the older exchange went, whole
    assert text.endswith("assistant\nTell me the worst.<|im_end|>")


def test_chat_replay_is_one_chat_in_the_template_without_the_held_out_or_other_names(
        tmp_path):
    script = read(write(tmp_path, "play.txt", PLAY))
    conversation = turns(script, "JULIET")
    text = chat_text(replay_tokens(conversation, chat_frame(), chat_tokenize, {3}))
    assert text.count("<|im_start|>system") == 1
    assert "Tell me the worst." not in text and "Ay me! What news?" in text
    assert text.endswith("<|im_start|>assistant\n")
    for name in ("Nurse:", "All:", "Citizen:", "JULIET:", "VISITOR:"):
        assert name not in text
