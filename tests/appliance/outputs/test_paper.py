"""Typesetting: only printable bytes, wrapped at word boundaries, one bell a line."""

import re

from hypothesis import given
from hypothesis import strategies as st

from appliance.outputs.paper import BELL, Typesetter, printable

ALLOWED = re.compile(r"^[\x20-\x7e\n\x07]*$")


def typeset(text, width=20, pieces=None):
    t = Typesetter(width=width)
    if pieces is None:
        pieces = [text]
    return "".join(t.feed(p) for p in pieces) + t.finish()


def lines(out):
    return out.replace(BELL, "").split("\n")


def test_typographic_characters_become_ascii():
    assert printable("\u201cNo\u201d \u2014 it\u2019s caf\u00e9\u2026") == '"No" -- it\'s cafe...'
    assert printable("na\u00efve \u00c5ngstr\u00f6m \u0153uvre") == "naive Angstrom oeuvre"


def test_emoji_and_control_bytes_are_dropped():
    assert printable("hi \U0001f600\x00\x1b[31m!\r") == "hi [31m!"
    assert printable("line\r\nend") == "line\nend"


def test_odd_spaces_keep_words_apart():
    assert printable("a\tb\u00a0c\u2003d\u2028e\x0cf") == "a b c d e f"


def test_ligatures_and_fractions_decompose():
    assert printable("\ufb01ne \u00bd \u2192") == "fine 1/2 ->"


def test_wraps_at_word_boundaries():
    out = typeset("the quick brown fox jumps over the lazy dog", width=15)
    assert lines(out) == ["the quick brown", "fox jumps over", "the lazy dog"]


def test_bell_rings_once_per_line_near_the_margin():
    out = typeset("aaaa bbbb cccc dddd eeee ffff gggg", width=20)
    for line in out.split("\n"):
        assert line.count(BELL) <= 1
    first = out.split("\n")[0]
    assert first.index(BELL) == 20 - 8, "the bell rings as the carriage passes width - 8"


def test_a_word_longer_than_the_line_is_broken():
    out = typeset("x" * 45, width=20)
    assert lines(out) == ["x" * 20, "x" * 20, "x" * 5]


def test_no_space_at_line_ends_or_starts():
    out = typeset("one two three four five six seven eight nine ten", width=9)
    for line in lines(out):
        assert line == line.strip()


def test_mid_line_a_word_waits_until_it_is_complete():
    t = Typesetter(width=30)
    assert t.feed("Good mor") == "Good"
    assert t.feed("row") == ""
    assert t.feed(", friend") == " morrow,"
    assert t.finish() == " friend"


def test_a_word_that_starts_a_line_is_struck_as_it_comes():
    t = Typesetter(width=10, bell_margin=0)
    assert t.feed("Go") == "Go", "the first letters of a reply go out at once"
    assert t.feed("od mor") == "od"
    assert t.feed("row, abcdefgh") == "\nmorrow,", "mid-line, the last word waits"
    assert t.finish() == "\nabcdefgh"


def test_a_newline_starts_a_line_without_the_pending_space():
    assert typeset("one \ntwo  three") == "one\ntwo three"


def test_start_tells_where_the_carriage_is():
    t = Typesetter(width=20, bell_margin=8)
    t.start(16)
    assert t.feed("hello there") + t.finish() == "\nhello there", "no room left on that line"
    assert t.column == 11
    t.start(13)
    assert BELL not in t.feed("ab") + t.finish(), "the bell already rang on that line"


@given(st.text(), st.integers(5, 80))
def test_output_is_printable_and_fits_the_carriage(text, width):
    out = typeset(text, width=width)
    assert ALLOWED.match(out)
    assert all(len(line) <= width for line in lines(out))


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
       st.lists(st.integers(0, 200), max_size=6))
def test_chunking_does_not_change_the_output(text, cuts):
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0] + points, points + [len(text)])]
    assert typeset(text, pieces=pieces) == typeset(text)


@given(st.text(max_size=300), st.integers(5, 40))
def test_words_survive_wrapping(text, width):
    """Every word arrives whole, except one longer than a line: cut into line-long pieces."""
    pieces = [w[i : i + width] for w in printable(text).split() for i in range(0, len(w), width)]
    assert typeset(text, width=width).replace(BELL, "").split() == pieces


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=300), st.integers(10, 40))
def test_the_bell_rings_once_as_a_line_passes_the_margin(text, width):
    for line in typeset(text, width=width).split("\n"):
        plain = line.replace(BELL, "")
        if len(plain) > width - 8:
            assert line.count(BELL) == 1 and line.index(BELL) == width - 8
        else:
            assert BELL not in line


def test_a_reply_after_keys_typed_while_the_model_thinks_keeps_the_margin(script_persona):
    """Keys typed between the submit and the reply's first word strike the paper (the
    firmware holds keys only once printing starts), so the reply starts a line of its own
    instead of being laid out from column 0 after them and running past the margin."""
    from appliance.core.loop import Appliance
    from appliance.engine.worker import Engine
    from appliance.persona.spec import Persona
    from firmware_bridge.host.simulator import SimulatedTypewriter
    from tests.conftest import wait_for

    width = 40
    persona = Persona.load(script_persona)
    engine = Engine(persona.model_path, n_ctx=512, n_threads=2).start()
    sim = SimulatedTypewriter(width=width, cps=400, cr_seconds=0.01)
    app = Appliance(persona, engine, sim.start(), width=width).start()
    try:
        assert wait_for(lambda: app.link.up, 10)
        # The loop is not running yet: the keys queue up before the reply's first piece.
        sim.type_text("Hello\n\n")
        sim.type_text("and now I type on while you think")
        assert wait_for(lambda: "you think" in sim.paper.text(), 10)
        assert wait_for(lambda: app.events.qsize() >= 2, 10)
        with app.running():
            assert wait_for(lambda: app.replies == 1 and app.idle, 30)
            assert sim.wait_printed(10)
        overrun = [line for line in sim.paper.text().split("\n") if len(line) > width]
        assert not overrun, sim.paper.text()
        assert "you think\n" in sim.paper.text(), "the reply starts on a line of its own"
    finally:
        sim.stop()
        engine.close()
