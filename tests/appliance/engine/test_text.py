"""The engine's text plumbing: stop strings and UTF-8 joining (no model needed)."""

from hypothesis import given
from hypothesis import strategies as st

from appliance.engine.worker import StopFilter, Utf8Joiner


def run(stops, pieces):
    f = StopFilter(stops)
    out = "".join(f.feed(p) for p in pieces)
    return out + f.finish(), f.stopped


def test_stop_cuts_before_the_stop_string():
    assert run(["\n"], ["Good morrow.", "\nROMEO: hi"]) == ("Good morrow.", True)


def test_partial_stop_is_held_back_then_released():
    f = StopFilter(["ROMEO:"])
    assert f.feed("fair ROM") == "fair "
    assert f.feed("AN") == "ROMAN"
    assert not f.stopped


def test_stop_split_across_pieces():
    assert run(["ROMEO:"], ["I say R", "OM", "EO", ": no"]) == ("I say ", True)


def test_no_stop_means_everything_comes_out():
    assert run(["\n"], ["a", "b", "c"]) == ("abc", False)


@given(st.text(), st.lists(st.integers(min_value=0, max_value=30), max_size=8))
def test_chunking_never_changes_the_result(text, cuts):
    stops = ["\n", "ROMEO:"]
    whole = run(stops, [text])
    points = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0] + points, points + [len(text)])]
    assert run(stops, pieces) == whole
    expected = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    assert whole[0] == text[:expected]


@given(st.text(), st.integers(min_value=1, max_value=7))
def test_utf8_joiner_never_splits_a_character(text, size):
    data = text.encode()
    j = Utf8Joiner()
    out = "".join(j.feed(data[i : i + size]) for i in range(0, len(data), size))
    assert out == text
