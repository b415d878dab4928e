"""`typewriter persona build` end to end, with tiny settings, and its refusals.

The shipped data and the real pipeline, bounded by --max-steps and a small
model (the real build takes minutes; CI never runs it).
"""

import json
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.engine.worker import Engine
from appliance.persona.bundle import verify
from appliance.persona.check import Prober
from appliance.persona.spec import Persona
from tests.conftest import typewriter

ENGLISH = Path(__file__).parents[3] / "appliance" / "data" / "english.txt"
TINY = ["--max-steps", "3", "--vocab", "512", "--embd", "64", "--layers", "2"]


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory) -> Path:
    """The first scenes of the shipped play: enough for a tokenizer, quick to train on."""
    path = tmp_path_factory.mktemp("dialogue") / "coriolanus.txt"
    path.write_text("".join(ENGLISH.read_text(encoding="utf-8").splitlines(True)[:3000]),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, dialogue) -> Path:
    out = tmp_path_factory.mktemp("built") / "menenius"
    done = typewriter("persona", "build", "--dialogue", str(dialogue), "--character",
                      "Menenius", "--out", str(out), *TINY, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    assert "MENENIUS: 75 speeches" in done.stderr  # counts per speaker are reported
    return out


def test_build_writes_a_sealed_bundle_that_the_appliance_runs(bundle):
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["menenius"]  # no temp, no work
    assert sorted(p.name for p in bundle.iterdir()) == [
        "SHA256SUMS", "card.md", "model.gguf", "persona.toml"]
    verify(bundle)
    persona = Persona.load(bundle)
    assert (persona.name, persona.frame.character_label, persona.frame.user_label) == (
        "Menenius", "MENENIUS", "VISITOR")
    engine = Engine(persona.model_path, n_ctx=512, seed=0).start()
    try:
        reply, reason, _ = Prober(persona, engine).ask("Good morrow.")
    finally:
        engine.close()
    assert reason in ("stop", "eos", "length") and isinstance(reply, str)


def test_card_says_where_from_how_and_how_to_rebuild(bundle, dialogue):
    card = (bundle / "card.md").read_text()
    assert "coriolanus.txt" in card and "75 by MENENIUS" in card
    assert "pretrain 3, fine-tune 3" in card
    assert f"--dialogue {dialogue} --character Menenius" in card
    assert "Gating probes passed: NO" in card  # three steps teach it nothing


def test_check_fails_an_untrained_persona_and_writes_json(bundle, tmp_path):
    report = tmp_path / "check.json"
    done = typewriter("persona", "check", str(bundle), "--json", str(report))
    assert done.returncode == 1, done.stderr
    result = json.loads(report.read_text())
    assert result["gating_passed"] is False
    probes = {r["probe"]: r for r in result["probes"]}
    assert probes["own name"]["gating"] and not probes["own name"]["passed"]
    assert {"sally-anne", "smarties", "topic"} <= set(probes)
    assert not any(probes[p]["gating"] for p in ("sally-anne", "smarties", "topic"))
    assert "sally-anne" in done.stdout and "gating probes: FAILED" in done.stdout


def test_check_refuses_a_bundle_whose_files_changed(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / "card.md", "a") as f:
        f.write("edited\n")
    done = typewriter("persona", "check", str(copy))
    assert done.returncode == 2
    assert "card.md: checksum does not match" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A LLaMA GGUF base as llama.cpp would be given one (random weights, tiny, Q4_0)."""
    from appliance.engine.synth import synthesize

    return synthesize("tiny", tmp_path_factory.mktemp("base") / "tiny-base.gguf")


def test_lora_route_on_a_gguf_base_writes_an_adapter_and_a_merge(tmp_path, dialogue,
                                                                 tiny_base):
    import gguf

    out = tmp_path / "out" / "menenius"
    done = typewriter("persona", "build", "--dialogue", str(dialogue), "--character",
                      "MENENIUS", "--base", str(tiny_base), "--max-steps", "2", "--batch", "4",
                      "--window", "96", "--merge", "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    verify(out)
    card = (out / "card.md").read_text()
    assert "LoRA (rank 16, alpha 32, on q_proj, v_proj, o_proj, down_proj) on the base" in card
    assert "NLL per reply token: base alone" in card
    persona = Persona.load(out)
    assert persona.base == str(tiny_base) and persona.adapter_path == out / "adapter.gguf"
    assert not (out / "model.gguf").exists()
    persona.check_base()
    engine = Engine(persona.model_path, n_ctx=512, seed=0, adapter=persona.adapter_path).start()
    try:
        Prober(persona, engine).ask("Who are you?")
    finally:
        engine.close()
    # The merge keeps the base's own tokenizer metadata, pre-tokenizer name included.
    def tokenizer_values(path):
        fields = gguf.GGUFReader(str(path)).fields
        return {k: fields[k].contents() for k in ("tokenizer.ggml.pre", "tokenizer.ggml.model",
                                                    "tokenizer.ggml.bos_token_id")}

    assert tokenizer_values(out / "merged.gguf") == tokenizer_values(tiny_base)
    merged = Engine(out / "merged.gguf", n_ctx=256, seed=0).start()
    merged.close()


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_frame_route_trains_in_the_bases_template_and_runs_in_it(tmp_path, dialogue):
    from appliance.engine.synth import synthesize
    from appliance.persona.spec import ChatFrame, make_frame

    base = synthesize("tiny", tmp_path / "chat-base.gguf", chat_template=CHATML)
    out = tmp_path / "out" / "menenius"
    done = typewriter("persona", "build", "--dialogue", str(dialogue), "--character",
                      "MENENIUS", "--base", str(base), "--frame", "chat", "--max-steps", "2",
                      "--batch", "4", "--window", "128", "--out", str(out), timeout=300)
    assert done.returncode == 0, done.stderr
    persona = Persona.load(out)
    assert persona.frame.kind == "chat" and persona.frame.system.startswith("You are Menenius")
    assert persona.generation.stop == ("\n",), "one line on the paper, as trained"
    card = (out / "card.md").read_text()
    assert "Frame: the base's own chat template, with the system line" in card
    nll = re.search(r"The base alone, by frame: dialogue ([0-9.]+), chat ([0-9.]+)\.", card)
    assert nll and all(float(v) > 0 for v in nll.groups()), card
    engine = Engine(persona.model_path, n_ctx=512, seed=0, adapter=persona.adapter_path).start()
    try:
        frame = make_frame(persona, engine.chat_template, engine.bos, engine.eos)
        assert isinstance(frame, ChatFrame)
        assert "<|im_start|>system\nYou are Menenius" in frame.render([], "Hail.")
    finally:
        engine.close()


def test_chat_frame_needs_a_base_with_a_chat_template(tmp_path, dialogue, tiny_base):
    one_line_error(build_into(tmp_path, dialogue, "--character", "MENENIUS", "--frame", "chat"),
                   "--frame chat needs --base")
    one_line_error(build_into(tmp_path, dialogue, "--character", "MENENIUS", "--frame", "chat",
                              "--base", str(tiny_base), "--max-steps", "1"),
                   "has no chat template")
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("make, words", [
    (None, "does not exist"),
    (b"not a model", "not a GGUF"),
])
def test_base_that_is_not_a_llama_gguf_is_refused(tmp_path, dialogue, make, words):
    base = tmp_path / "base.gguf"
    if make is not None:
        base.write_bytes(make)
    done = build_into(tmp_path, dialogue, "--character", "MENENIUS", "--base", str(base))
    one_line_error(done, str(base), words)
    assert not any((tmp_path / "out").iterdir())


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    """The last line is the error, the only one; what came before is progress."""
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("typewriter: error:")]
    assert len(errors) == 1 and done.stderr.strip().endswith(errors[0]), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in errors[0]


def build_into(tmp_path: Path, dialogue: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    (tmp_path / "out").mkdir(exist_ok=True)
    return typewriter("persona", "build", "--dialogue", str(dialogue), "--out",
                      str(tmp_path / "out" / "bundle"), *args, **kw)


def test_unknown_format_is_refused_and_leaves_nothing(tmp_path):
    prose = tmp_path / "essay.txt"
    prose.write_text("It was a dark and stormy night.\nThe rain fell.\n")
    one_line_error(build_into(tmp_path, prose, "--character", "ROMEO"),
                   "essay.txt:1: unknown dialogue format")
    assert not any((tmp_path / "out").iterdir())


def test_character_with_no_lines_is_refused_and_leaves_nothing(tmp_path, dialogue):
    one_line_error(build_into(tmp_path, dialogue, "--character", "HAMLET"),
                   "'HAMLET' has no lines", "MENENIUS (75)")
    assert not any((tmp_path / "out").iterdir())


def _small_files() -> None:
    """Files may grow to 256 KB in this process: a disk that fills up mid-build."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG), do not kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (256_000, 256_000))


def test_no_room_for_the_output_is_one_line_and_leaves_nothing(tmp_path, dialogue):
    (tmp_path / "out").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "persona", "build", "--dialogue", str(dialogue),
         "--character", "MENENIUS", "--out", str(tmp_path / "out" / "bundle"), *TINY],
        capture_output=True, text=True, timeout=300, preexec_fn=_small_files)
    one_line_error(done, "no room to write under", "free some space")
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_accelerate_launch_trains_in_two_processes_and_the_adapter_runs(tmp_path, dialogue,
                                                                        tiny_base):
    """The same command under `accelerate launch` (two CPU processes, gloo): one bundle.

    accelerate's --cpu launches one process unless MPI is set up; its torchrun launcher
    (--multi_gpu) starts two, and `--device cpu` (the default) keeps them on the CPU,
    where torch.distributed uses gloo."""
    out = tmp_path / "out" / "menenius"
    launcher = Path(sys.executable).parent / "accelerate"
    done = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "appliance.cli", "persona",
         "build", "--dialogue", str(dialogue), "--character", "MENENIUS", "--base",
         str(tiny_base), "--max-steps", "2", "--batch", "4", "--window", "96", "--out",
         str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(f"wrote {out}") == 1  # the main process reports, once
    assert "2 process(es)" in (out / "card.md").read_text()
    verify(out)
    persona = Persona.load(out)
    engine = Engine(persona.model_path, n_ctx=256, seed=0, adapter=persona.adapter_path).start()
    try:
        assert Prober(persona, engine).ask("Who are you?") is not None
    finally:
        engine.close()
    assert not list(out.parent.glob(".menenius.*"))  # no partial or work folder left
