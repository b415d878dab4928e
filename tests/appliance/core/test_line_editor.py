"""The line editor: what the person typed, as the appliance will send it."""

from hypothesis import given
from hypothesis import strategies as st

from appliance.core.line_editor import Event, LineEditor
from firmware_bridge.board import messages as m


def type_keys(editor, text):
    events = []
    for ch in text:
        ev = editor.press(m.KEY_RETURN if ch == "\n" else ord(ch))
        if ev is not None:
            events.append(ev)
    return events


def test_two_returns_submit_the_lines_joined():
    e = LineEditor()
    events = type_keys(e, "Good morrow,\nfair lady.\n\n")
    assert events[-1] == Event("submit", "Good morrow, fair lady.")
    assert e.text == ""


def test_submit_key_sends_without_returns():
    e = LineEditor()
    type_keys(e, "hello")
    assert e.press(m.KEY_SUBMIT) == Event("submit", "hello")


def test_empty_message_is_not_submitted():
    e = LineEditor()
    assert e.press(m.KEY_RETURN) is None
    assert e.press(m.KEY_SUBMIT) is None


def test_backspace_edits_across_a_line_break():
    e = LineEditor()
    type_keys(e, "ab\n")
    e.press(m.KEY_BACKSPACE)
    e.press(m.KEY_BACKSPACE)
    type_keys(e, "c")
    assert e.text == "ac"
    e.press(m.KEY_RETURN)
    assert e.press(m.KEY_RETURN) == Event("submit", "ac")


def test_tab_is_a_space_and_edits_report_the_text():
    e = LineEditor()
    assert type_keys(e, "a")[-1] == Event("edit", "a")
    assert e.press(m.KEY_TAB) == Event("edit", "a")
    type_keys(e, "b")
    assert e.text == "a b"


def test_function_keys():
    e = LineEditor()
    type_keys(e, "half a thought")
    assert e.press(m.KEY_RESET) == Event("reset")
    assert e.text == ""
    assert e.press(m.KEY_REPRINT) == Event("reprint")
    assert e.press(m.KEY_NEXT_PERSONA) == Event("next_persona")
    assert e.press(m.KEY_TOGGLE_SPEECH) == Event("toggle_speech")


def test_reserved_codes_are_ignored_and_counted():
    e = LineEditor()
    for code in (0x00, 0x1B, 0x7F, 0x80, 0x86, 0xFF):
        assert e.press(code) is None
    assert e.ignored == 6 and e.text == ""


def test_a_line_in_progress_can_be_restored():
    e = LineEditor()
    e.load("restored after\na power cut")
    assert e.text == "restored after a power cut"
    assert type_keys(e, "!\n\n")[-1] == Event("submit", "restored after a power cut!")
    e = LineEditor(initial="half\n")
    e.press(m.KEY_BACKSPACE)
    assert type_keys(e, "way\n\n")[-1] == Event("submit", "halfway")


def test_reset_clears_the_line_and_the_next_message_starts_fresh():
    e = LineEditor()
    type_keys(e, "never mind")
    e.press(m.KEY_RESET)
    assert type_keys(e, "Hello\n\n")[-1] == Event("submit", "Hello")


KEYS = st.one_of(st.integers(0x20, 0x7E), st.sampled_from([m.KEY_BACKSPACE, m.KEY_TAB]))


@given(st.lists(KEYS, max_size=100))
def test_the_text_is_what_the_paper_shows_after_backspaces(codes):
    """A model of the paper: keys typed, backspace taking back the last one."""
    e = LineEditor()
    paper = []
    for code in codes:
        e.press(code)
        if code == m.KEY_BACKSPACE:
            paper = paper[:-1]
        else:
            paper.append(" " if code == m.KEY_TAB else chr(code))
    assert e.text == " ".join("".join(paper).split())


@given(st.lists(st.integers(0, 255), max_size=200))
def test_any_key_sequence_is_safe(codes):
    e = LineEditor()
    for code in codes:
        ev = e.press(code)
        if ev is not None:
            assert ev.kind in ("edit", "submit", "reset", "reprint", "next_persona",
                               "toggle_speech")
            assert "\n" not in ev.text and ev.text == ev.text.strip()
