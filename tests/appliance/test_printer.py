"""Typesetting: only printable bytes, wrapped at word boundaries, one bell a line."""

import re

from hypothesis import given
from hypothesis import strategies as st

from appliance.printer import BELL, Typesetter, printable

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
    assert printable("a\tb") == "a b"


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


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=200))
def test_words_survive_wrapping(text):
    words = [w for w in printable(text).split() if len(w) <= 20]
    if len(words) == len(printable(text).split()):
        assert typeset(text).replace(BELL, "").split() == words
