"""Bad input ends with one line naming the problem, no traceback, non-zero exit."""

import pytest

from tests.conftest import typewriter, write_persona


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_missing_persona_toml(tmp_path):
    (tmp_path / "empty").mkdir()
    result = typewriter("demo", "--persona", str(tmp_path / "empty"), "--type", "hi")
    assert_one_line_error(result, "persona.toml")


def test_malformed_persona_toml(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "persona.toml").write_text('name = "Juliet\nmodel = 3\n')
    assert_one_line_error(typewriter("demo", "--persona", str(folder), "--type", "hi"),
                          "persona.toml")


def test_missing_model_file(tmp_path):
    folder = write_persona(tmp_path / "p", tmp_path / "nowhere.gguf")
    assert_one_line_error(typewriter("demo", "--persona", str(folder), "--type", "hi"),
                          "nowhere.gguf")


@pytest.mark.parametrize("content", [b"PK\x03\x04 not a model", b"", b"GGU"])
def test_non_gguf_model(tmp_path, content):
    model = tmp_path / "model.gguf"
    model.write_bytes(content)
    folder = write_persona(tmp_path / "p", model)
    assert_one_line_error(typewriter("demo", "--persona", str(folder), "--type", "hi"),
                          "not a GGUF")


def test_model_override_that_is_not_gguf(tmp_path, script_persona):
    junk = tmp_path / "junk.bin"
    junk.write_text("hello")
    assert_one_line_error(
        typewriter("demo", "--persona", str(script_persona), "--model", str(junk), "--type", "hi"),
        "not a GGUF",
    )


def test_serial_port_that_does_not_exist(script_persona):
    result = typewriter("run", "--port", "/dev/ttyNOPE42", "--persona", str(script_persona))
    assert_one_line_error(result, "/dev/ttyNOPE42", "does not exist")


def test_a_file_that_is_not_a_serial_port(tmp_path, script_persona):
    not_a_port = tmp_path / "notes.txt"
    not_a_port.write_text("hello")
    result = typewriter("run", "--port", str(not_a_port), "--persona", str(script_persona))
    assert_one_line_error(result, "cannot open serial port")


def test_a_corrupt_gguf_with_the_right_magic(tmp_path, script_persona):
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 64)
    result = typewriter("demo", "--persona", str(script_persona), "--model", str(bad),
                        "--type", "hi")
    assert_one_line_error(result, "could not load")


@pytest.mark.parametrize("args,needle", [
    (["demo", "--width", "0"], "--width"),
    (["simulate", "--cps", "fast"], "--cps"),
    (["simulate", "--script", "/no/such/script.txt"], "cannot read the script"),
    (["model", "synth", "--shape", "huge", "/tmp/x.gguf"], "unknown shape"),
])
def test_bad_options(args, needle):
    result = typewriter(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and needle in result.stderr
