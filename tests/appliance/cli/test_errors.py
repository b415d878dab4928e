"""Bad input ends with one line naming the problem, no traceback, non-zero exit."""

import argparse
import re

import pytest

from appliance.cli import parser
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


def test_a_typewriter_not_there_yet_is_waited_for_with_one_line_saying_why(script_persona):
    """Switched off or unplugged at boot: run waits (systemd would give up on a service
    that exits), saying once what it waits for; Ctrl-C stops it, without a traceback."""
    import signal
    import subprocess
    import sys

    app = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--port",
                            "/dev/ttyNOPE42", "--persona", str(script_persona)],
                           stderr=subprocess.PIPE, text=True)
    try:
        line = app.stderr.readline()
        assert "waiting for the typewriter on /dev/ttyNOPE42" in line, line
        assert "does not exist" in line and "Ctrl-C stops" in line
        assert app.poll() is None, "it waits instead of exiting"
    finally:
        app.send_signal(signal.SIGINT)
        rest = app.communicate(timeout=30)[1]
    assert "Traceback" not in rest, rest


def test_a_file_that_is_not_a_serial_port(tmp_path, script_persona):
    not_a_port = tmp_path / "notes.txt"
    not_a_port.write_text("hello")
    result = typewriter("run", "--port", str(not_a_port), "--persona", str(script_persona))
    assert_one_line_error(result, "is not a serial port")


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


# -- a newcomer's first hour: every verb's --help, and each documented failure ---------------

def _verbs(p, path=()):
    """Every command path in the argparse tree: ("run",), ("persona", "build"), ..."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [v for a in subs for name, child in a.choices.items()
            for v in _verbs(child, path + (name,))]


VERBS = _verbs(parser())
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINDX63t/p9EMRF4ySbBjBCBKbjtX1WBdlk/fzpMIciNb me@host"
ERROR_LINE = re.compile(r"^typewriter( [\w-]+)*: error: ")


def test_the_tree_holds_every_verb_group():
    assert {v[0] for v in VERBS} >= {"run", "demo", "persona", "model", "firmware", "image",
                                      "ctl", "config", "transcript"}
    assert len(VERBS) >= 20, VERBS


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb):
    result = typewriter(*verb, "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: typewriter " + " ".join(verb)), result.stdout
    assert "Traceback" not in result.stderr and not result.stderr


def assert_ends_in_one_error_line(result, needle):
    """Non-zero exit, no traceback, exactly one `typewriter...: error:` line, the last."""
    err = result.stderr.strip()
    assert result.returncode != 0, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert [line for line in lines if ERROR_LINE.match(line)] == lines[-1:], err
    assert needle in lines[-1], err


# (arguments with {tmp} for a fresh folder and {file} for a plain file there; a needle)
FAILURES = [
    (["persona", "build"], "required: --dialogue, --character, --out"),
    (["persona", "build", "--dialogue", "{tmp}/none.txt", "--character", "JULIET", "--out",
      "{tmp}/out"], "no such file: pass the dialogue file"),
    (["persona", "check", "{tmp}/none"], "does not exist: pass a folder that holds"),
    (["persona", "use", "nobody", "--personas", "{tmp}/personas"], "no persona 'nobody'"),
    (["persona", "authorize-key", "not a key"], "not an OpenSSH public key"),
    (["transcript", "--state-dir", "{tmp}/none"], "no transcript in"),
    (["config", "check", "{tmp}/none.toml"], "does not exist: create it"),
    (["config", "check", "{tmp}"], "(Is a directory): pass a TOML file"),
    (["model", "synth", "--shape", "nope", "{tmp}/x.gguf"], "unknown shape 'nope'"),
    (["model", "bench", "--model", "{tmp}/none.gguf"], "does not exist"),
    (["model", "bench", "--model", "{file}"], "is not a GGUF model"),
    (["model", "fetch", "nope"], "unknown base model 'nope'"),
    (["demo", "--persona", "{tmp}/none"], "persona"),
    (["demo", "--model", "{tmp}/none.gguf", "--type", "hi"], "does not exist"),
    (["demo", "--cps", "0"], "--cps"),
    (["run"], "no serial port: pass --port"),
    (["run", "--port", "{file}"], "is not a serial port"),
    (["run", "--config", "{tmp}/none.toml", "--port", "/dev/nonexistent"], "does not exist"),
    (["simulate", "--script", "{tmp}/none.txt"], "cannot read the script"),
    (["firmware", "check", "--port", "/dev/nonexistent", "--timeout", "0.5"], "does not exist"),
    (["firmware", "flash", "--model", "nope"], "invalid choice: 'nope'"),
    (["image", "build", "--base", "{tmp}/none.img.xz", "--wheelhouse", "{tmp}", "--ssh-key",
      KEY, "--out", "{tmp}/x.img"], "--base"),
    (["image", "build", "--base", "{file}", "--wheelhouse", "{tmp}", "--ssh-key",
      "{tmp}/none.pub", "--out", "{tmp}/x.img"], "no such file: make a key with ssh-keygen"),
    (["image", "wheelhouse", "--arch", "aarch64", "--engine-wheel", "{tmp}/none.whl", "--out",
      "{tmp}/wheels"], "--engine-wheel"),
    (["image", "wheelhouse", "--arch", "riscv64", "--out", "{tmp}/wheels"], "invalid choice"),
    (["ctl", "status", "--control", "{tmp}/none.sock"], "no appliance is running here"),
    (["ctl", "status", "--control", "{file}"], "check that `typewriter run` is running"),
    (["install-units", "--root", "{file}"], "cannot install under"),
    (["install-units", "--root", "{tmp}/root", "--command", "relative/typewriter"],
     "must be an absolute path"),
    (["bench", "--shape", "nope"], "unknown shape 'nope'"),
    (["model", "bench", "--shape", "nope"], "unknown shape 'nope'"),
    (["model", "synth", "--shape", "tiny", "{file}/x.gguf"], "cannot write"),
    (["persona", "authorize-key", KEY, "--authorized-keys", "{file}/keys"], "cannot write"),
]


@pytest.mark.parametrize("args, needle", FAILURES,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_each_failure_ends_in_one_line_naming_the_fix(tmp_path, args, needle):
    plain = tmp_path / "notes.txt"
    plain.write_text("hello\n")
    args = [a.format(tmp=tmp_path, file=plain) for a in args]
    assert_ends_in_one_error_line(typewriter(*args, timeout=60), needle)


def test_validating_a_folder_that_is_no_bundle_says_why_it_is_rejected(tmp_path):
    result = typewriter("persona", "validate", str(tmp_path), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("rejected: checksums:")
