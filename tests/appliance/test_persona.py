"""Persona cards: every problem is one clear message; frames keep the model in its turn."""

import pytest

from appliance.persona import ChatFrame, DialogueFrame, Persona, PersonaError, make_frame

GOOD = """name = "Juliet"
model = "model.gguf"
[frame]
user_label = "ROMEO"
character_label = "JULIET"
preamble = "In Verona."
[[frame.examples]]
user = "Who is there?"
character = "A friend."
[generation]
max_tokens = 40
temperature = 0.7
stop = ["Nurse:"]
"""


def make(tmp_path, toml=GOOD, model=b"GGUF\x03\x00\x00\x00"):
    folder = tmp_path / "juliet"
    folder.mkdir()
    (folder / "persona.toml").write_text(toml)
    if model is not None:
        (folder / "model.gguf").write_bytes(model)
    return folder


def error(tmp_path, **kw):
    with pytest.raises(PersonaError) as e:
        Persona.load(make(tmp_path, **kw))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_a_good_card_loads(tmp_path):
    p = Persona.load(make(tmp_path))
    assert p.name == "Juliet" and p.generation.max_tokens == 40
    assert p.frame.examples[0].character == "A friend."
    assert p.model_path.name == "model.gguf"


def test_missing_folder_and_missing_card(tmp_path):
    with pytest.raises(PersonaError, match="does not exist"):
        Persona.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PersonaError, match="persona.toml is missing"):
        Persona.load(tmp_path / "empty")


def test_toml_syntax_error_names_the_line(tmp_path):
    assert "line 2" in error(tmp_path, toml='name = "x"\nmodel = \n')


@pytest.mark.parametrize("toml,needle", [
    (GOOD.replace('name = "Juliet"\n', ""), "name: is required"),
    (GOOD.replace('name = "Juliet"', "name = 3"), "name: must be a string"),
    (GOOD + "colour = 'red'\n", "generation.colour: unknown setting"),
    (GOOD.replace("[frame]", "mood = 1\n[frame]"), "mood: unknown setting"),
    (GOOD.replace("max_tokens = 40", "max_tokens = 0"), "generation.max_tokens: must be"),
    (GOOD.replace("temperature = 0.7", 'temperature = "hot"'), "generation.temperature"),
    (GOOD.replace('stop = ["Nurse:"]', "stop = [1]"), "generation.stop"),
    (GOOD.replace('user_label = "ROMEO"', 'user_label = "RO:MEO"'), "frame.user_label"),
    (GOOD.replace("[frame]", '[frame]\nkind = "poem"'), "frame.kind"),
    (GOOD.replace('user = "Who is there?"', 'user = ""'), "frame.examples[0].user"),
    (GOOD.replace('model = "model.gguf"', 'model = "model.gguf"\nsynthetic = "huge"'),
     "unknown shape"),
])
def test_each_problem_is_named(tmp_path, toml, needle):
    assert needle in error(tmp_path, toml=toml)


def test_missing_model_file(tmp_path):
    assert "model.gguf does not exist" in error(tmp_path, model=None)


def test_model_that_is_not_gguf(tmp_path):
    assert "is not a GGUF model" in error(tmp_path, model=b"PK\x03\x04")


def test_synthetic_persona_may_lack_its_model(tmp_path):
    toml = GOOD.replace('model = "model.gguf"', 'model = "model.gguf"\nsynthetic = "tiny"')
    p = Persona.load(make(tmp_path, toml=toml, model=None))
    assert p.model_missing and p.synthetic == "tiny"


def test_the_shipped_persona_loads():
    from appliance.cli import DEFAULT_PERSONA

    p = Persona.load(DEFAULT_PERSONA)
    assert p.synthetic == "tiny" and p.frame.kind == "dialogue"


def test_dialogue_frame_is_one_line_per_turn_ending_with_the_label(tmp_path):
    frame = make_frame(Persona.load(make(tmp_path)), None, "<s>", "</s>")
    assert isinstance(frame, DialogueFrame)
    prompt = frame.render([("user", "Hi"), ("character", "Hello\nthere")], "Two\nlines")
    assert prompt == ("In Verona.\n\nROMEO: Who is there?\nJULIET: A friend.\n"
                      "ROMEO: Hi\nJULIET: Hello there\nROMEO: Two lines\nJULIET:")
    assert frame.stops == ["\n", "ROMEO:", "Nurse:"]


TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chat_persona(tmp_path):
    toml = GOOD.replace("[frame]", '[frame]\nkind = "chat"\nsystem = "Be Juliet."')
    return Persona.load(make(tmp_path, toml=toml))


def test_chat_frame_uses_the_models_template(tmp_path):
    frame = make_frame(chat_persona(tmp_path), TEMPLATE, "<s>", "</s>")
    assert isinstance(frame, ChatFrame)
    prompt = frame.render([], "Hi")
    assert prompt == ("<|system|>Be Juliet.</s><|user|>Who is there?</s><|assistant|>A friend."
                      "</s><|user|>Hi</s><|assistant|>")
    assert frame.stops[0] == "</s>"


def test_chat_frame_without_a_template_is_an_error(tmp_path):
    with pytest.raises(PersonaError, match="no chat template"):
        make_frame(chat_persona(tmp_path), None, "", "")


def test_template_injection_is_refused(tmp_path):
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    frame = make_frame(chat_persona(tmp_path), evil, "", "")
    with pytest.raises(PersonaError, match="unsafe"):
        frame.render([], "hi")
