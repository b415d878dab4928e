"""`typewriter persona build`: dialogue and a character in, a sealed persona bundle out.

The bundle is assembled in a hidden temporary folder beside --out and renamed
into place only when complete and sealed; any failure (no disk space included)
removes it. Checkpoints live in a work folder beside it (`.NAME.work`), kept
only when there is something in it to resume from.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from appliance.persona.build import BuildError
from appliance.persona.build.dialogue import Script, read

NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@dataclass
class Request:
    dialogue: Path
    character: str
    out: Path
    base: Optional[str] = None
    max_steps: Optional[int] = None
    format: str = "auto"
    user_label: str = "VISITOR"
    preamble: str = ""  # a dialogue frame's first line, or a chat frame's system line
    frame: str = "dialogue"  # or "chat": the base's own chat template
    context: int = 3  # earlier exchanges in each example
    identity: bool = True
    quant: str = "q4_0"
    licence: str = "not stated"
    source: str = ""  # where the dialogue came from, for the card
    replace: bool = False
    work: Optional[Path] = None
    check: bool = True
    merge: bool = False  # on a base: also write the merged model, quantized
    device: str = "cpu"
    command: List[str] = field(default_factory=list)  # the command line, for the card


@dataclass
class Result:
    out: Path
    summary: dict


def character_name(label: str) -> str:
    return " ".join(w.capitalize() for w in label.split())


def build(req: Request, recipe=None, say: Callable[[str], None] = print) -> Result:
    """Build the bundle; raises BuildError (one line) and leaves no partial bundle."""
    from appliance.persona.build.train import Recipe

    out = Path(req.out).absolute()
    if out.exists() and not req.replace:
        raise BuildError(f"--out {out} already exists: pick another folder or pass --replace")
    if req.user_label.upper() == req.character.strip().upper():
        raise BuildError("--user-label must differ from the character's label")
    if req.base is not None:
        from appliance.engine.bases import resolve
        from appliance.persona.build.train import check_gguf_base

        check_gguf_base(resolve(req.base))
    if req.frame not in ("dialogue", "chat"):
        raise BuildError(f"--frame {req.frame!r}: use dialogue or chat")
    if req.frame == "chat" and req.base is None:
        raise BuildError("--frame chat needs --base: a model trained from scratch has no chat "
                         "template; use --frame dialogue")
    if req.device not in ("cpu", "cuda"):
        raise BuildError(f"--device {req.device!r}: use cpu or cuda")
    script = read(req.dialogue, req.format)
    character = script.speaker(req.character)
    counts = script.counts()
    say(f"{script.path}: {script.format} format, {len(script.speeches)} speeches, "
        f"{len(counts)} speakers; {character}: {counts[character]} speeches")
    if counts[character] < 2:
        raise BuildError(f"{script.path}: {character} has only {counts[character]} speech; "
                         "a persona needs at least 2: pick a character with more lines")
    recipe = (recipe or (Recipe.on_base(req.base) if req.base else Recipe())).bounded(
        req.max_steps)
    accelerator = _accelerator(req.device)
    main = accelerator.is_main_process
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(req.work) if req.work else out.parent / f".{out.name}.work"
    if main:
        for stale in out.parent.glob(f".{out.name}.partial-*"):  # from a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; a bundle is not
    try:
        summary = _assemble(req, recipe, script, character, work, tmp, say, accelerator)
        if not main:  # the other processes only trained
            return Result(out, summary)
        _move_into_place(tmp, out)
    except OSError as e:
        if e.errno in NO_ROOM:
            raise BuildError(f"no room to write under {out.parent} ({e.strerror}): free some "
                             "space or pick another --out") from None
        raise BuildError(f"cannot write under {out.parent} ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if main and work.exists() and not any(work.glob("*.pt")):
            shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return Result(out, summary)


def _accelerator(device: str):
    """accelerate's Accelerator: one process here, or what `accelerate launch` set up.

    bfloat16 autocast where the hardware does bfloat16 matmuls natively (a GPU,
    or x86 with AMX/AVX-512 BF16: a LoRA step on SmolLM2 took 28 s instead of
    40 s here); elsewhere it is slower than float32.
    """
    import torch
    from accelerate import Accelerator

    if device == "cuda":
        if not torch.cuda.is_available():
            raise BuildError("--device cuda: torch sees no CUDA GPU here: use --device cpu")
        bf16 = torch.cuda.is_bf16_supported()
    else:
        from appliance.system.memory import cpu_flags

        bf16 = bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return Accelerator(cpu=device == "cpu", mixed_precision="bf16" if bf16 else "no")


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fingerprint(req: Request, recipe, script: Script, character: str,
                 base_sha256: str) -> dict:
    """What decides the trained weights, JSON-shaped (tuples as lists) to compare saved ones."""
    return json.loads(json.dumps({
        "dialogue_sha256": hashlib.sha256(script.path.read_bytes()).hexdigest(),
        "character": character, "user_label": req.user_label, "preamble": req.preamble,
        "frame": req.frame,
        "context": req.context, "identity": req.identity, "recipe": asdict(recipe),
        "base_sha256": base_sha256}))


def _assemble(req: Request, recipe, script: Script, character: str, work: Path, tmp: Path,
              say: Callable[[str], None], accelerator) -> dict:
    import torch

    from appliance.persona.build import examples as ex
    from appliance.persona.build.train import (
        Stage,
        example_batch,
        progress_bar,
        stream_batch,
        tokenize_with,
    )
    from appliance.persona.spec import ChatFrame, DialogueFrame

    main = accelerator.is_main_process
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    name = character_name(character)
    def config(kind: str):
        """The frame trained in (the given preamble), or another measured beside it."""
        given = req.preamble if kind == req.frame else ""
        return ex.character_frame(character, name, req.user_label,
                                  given or default_preamble(name, kind), kind)

    frame_config = config(req.frame)
    frames = {"dialogue": DialogueFrame(config("dialogue"))}
    base_path = base_sha256 = None
    if recipe.base is not None:
        from appliance.engine.bases import resolve, sha256_of

        base_path = resolve(recipe.base)
        base_sha256 = sha256_of(base_path)
    fingerprint = _fingerprint(req, recipe, script, character, base_sha256 or "")
    saved = work / "build.json"
    if main:
        work.mkdir(parents=True, exist_ok=True)
        if saved.exists() and json.loads(saved.read_text()) != fingerprint:
            raise BuildError(f"{work} holds checkpoints of another build: remove it to start "
                             "over, or run the command that made it to resume")
        saved.write_text(json.dumps(fingerprint, indent=1))
    accelerator.wait_for_everyone()

    started = time.monotonic()
    losses = {}
    tok = None  # from scratch: the vocabulary learned from the dialogue
    end = -1  # a chat reply's end-of-turn token
    if base_path is None:
        model, tok = _scratch_model(recipe, script, work, main)
        tokenize, pad = tokenize_with(tok, model.config.bos_token_id), model.config.eos_token_id
    else:
        from appliance.persona.build.train import add_lora, llama_vocabulary, load_gguf_base

        vocab = llama_vocabulary(base_path)
        tokenize, end = vocab.tokenize, vocab.eos_id
        if vocab.chat_template:  # the base alone is measured in both frames
            frames["chat"] = ChatFrame(config("chat"), vocab.chat_template, vocab.bos,
                                       vocab.eos)
        elif req.frame == "chat":
            raise BuildError(f"--base {base_path}: the model has no chat template "
                             "(tokenizer.chat_template): use --frame dialogue")
        say(f"loading {base_path} into transformers (dequantized)...")
        model = add_lora(load_gguf_base(base_path), recipe)
        pad = model.config.eos_token_id
        pad = pad[0] if isinstance(pad, list) else pad
        if pad is None:
            raise BuildError(f"--base {base_path}: the GGUF names no EOS token: add "
                             "tokenizer.ggml.eos_token_id")

    frame = frames[req.frame]
    conversation = ex.turns(script, character)
    test = ex.held_out(conversation, recipe.held_out) if base_path is not None else set()

    def examples_in(frame, only=None, pairs=None, context=req.context):
        return ex.reply_examples(pairs or conversation, frame, tokenize, end, context,
                                 recipe.window, only=only)

    examples = examples_in(frame, lambda i: i not in test)
    # Held-out replies that fit the window in every frame: the frames are compared on the
    # same lines (a chat frame's system line and markers leave a long speech less room).
    common = {i for i in test if all(examples_in(f, lambda j, i=i: j == i)
                                     for f in frames.values())}
    held = {kind: examples_in(f, lambda i: i in common) for kind, f in frames.items()}
    identity = []
    if req.identity:
        identity = examples_in(frame, pairs=ex.identity(name), context=0)
        examples += identity * max(1, len(examples) // (3 * len(identity)))
    if not examples:
        raise BuildError(f"{script.path}: no speech of {character} answers another speaker: "
                         "a persona learns from replies")
    say(f"{len(examples)} training examples ({len(identity)} identity exchanges, "
        f"{'repeated' if req.identity else 'none'}), {len(held[req.frame])} held out; "
        f"{req.frame} frame: {req.user_label} -> {character}")

    replay = torch.tensor(ex.replay_tokens(conversation, frame, tokenize, test))
    if len(replay) <= recipe.window + 1:
        raise BuildError(f"{script.path}: too little dialogue to train on ({len(replay)} "
                         "tokens): give a longer script")
    nll = {}
    with progress_bar(disable=not main) as progress:
        if base_path is None:
            ids = torch.tensor([i for line in ex.pretraining_text(script).splitlines(True)
                                for i in tokenize(line, False)])
            losses["pretrain"] = Stage(
                "pretrain", model, recipe.pretrain_steps, recipe.pretrain_lr, work,
                lambda step: stream_batch(ids, recipe, step),
                accelerator=accelerator).run(progress)
            losses["finetune"] = Stage(
                "finetune", model, recipe.finetune_steps, recipe.finetune_lr, work,
                lambda step: example_batch(examples, recipe, step, pad, replay),
                accelerator=accelerator).run(progress)
        else:
            stage = Stage("lora", model, recipe.finetune_steps, recipe.lora_lr, work,
                          lambda step: example_batch(examples, recipe, step, pad, replay),
                          save_every=10, accelerator=accelerator)
            losses["lora"] = stage.run(progress)
            model = stage.model
    trained = time.monotonic() - started
    precision = accelerator.mixed_precision
    if not main:
        return {}
    if base_path is not None and held[req.frame]:
        from appliance.persona.build.train import nll_per_token

        nll["persona"] = nll_per_token(model, held[req.frame], pad)
        with model.disable_adapter():
            nll["base"] = nll_per_token(model, held[req.frame], pad)
            nll["base_by_frame"] = {kind: round(nll_per_token(model, h, pad), 3)
                                    for kind, h in held.items() if h}
        say(f"held-out NLL per token on {len(held[req.frame])} replies: base "
            f"{nll['base']:.3f}, persona {nll['persona']:.3f}; the base alone by frame: "
            + ", ".join(f"{k} {v:.3f}" for k, v in nll["base_by_frame"].items()))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    files = _write_model(req, recipe, model, tok, base_path, tmp, say)
    (tmp / "persona.toml").write_text(_persona_toml(name, frame_config, recipe.base,
                                                    base_sha256), encoding="utf-8")
    summary = {
        "character": character, "name": name, "dialogue": str(script.path),
        "format": script.format, "speeches": counts_of(script, character),
        "examples": len(examples), "identity_examples": len(identity) if req.identity else 0,
        "held_out": len(held[req.frame]), "nll": nll, "system": frame_config.system,
        "recipe": asdict(recipe), "losses": losses, "train_seconds": round(trained, 1),
        "params": params, "trainable": trainable, "precision": precision,
        "processes": accelerator.num_processes,
        "quant": req.quant, "files": files,
        "model_bytes": sum(files.values()),
        "dialogue_sha256": fingerprint["dialogue_sha256"], "base_sha256": base_sha256,
    }
    check = _check(tmp) if req.check else None
    (tmp / "card.md").write_text(_card(req, summary, check), encoding="utf-8")
    from appliance.persona.bundle import seal
    seal(tmp)
    return {**summary, "check": check}


def _scratch_model(recipe, script: Script, work: Path, main: bool):
    """A new small LLaMA and the byte-level BPE learned from the dialogue (kept in work)."""
    from appliance.persona.build import examples as ex
    from appliance.persona.build.train import new_model, train_tokenizer

    tok_path = work / "tokenizer.json"
    if tok_path.exists():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = train_tokenizer(ex.pretraining_text(script), recipe.vocab)
        if main:
            tok.save(str(tok_path))
    return new_model(recipe, tok), tok


def _write_model(req: Request, recipe, model, tok, base_path: Optional[Path], tmp: Path,
                 say: Callable[[str], None]) -> dict:
    """The bundle's model files (name -> bytes): a whole model, or an adapter (and a merge)."""
    if base_path is None:
        from appliance.persona.build.export import export

        export(model, tok, tmp / "model.gguf", req.quant)
        return {"model.gguf": (tmp / "model.gguf").stat().st_size}
    from appliance.persona.build.adapter import write_adapter, write_merged

    adapted = write_adapter(model, tmp / "adapter.gguf", alpha=2 * recipe.lora_rank)
    say(f"wrote adapter.gguf: LoRA rank {recipe.lora_rank} on {adapted} projections, f16")
    files = {"adapter.gguf": (tmp / "adapter.gguf").stat().st_size}
    if req.merge:
        write_merged(model.merge_and_unload(), base_path, tmp / "merged.gguf", req.quant)
        files["merged.gguf"] = (tmp / "merged.gguf").stat().st_size
    return files


def _check(folder: Path) -> dict:
    """`typewriter persona check` on the new bundle, in a fresh process.

    llama.cpp's AMX kernels died with SIGILL in the process that had trained
    with torch (x86 with AMX); a child process is also what a user runs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "check.json"
        done = subprocess.run([sys.executable, "-m", "appliance.cli", "persona", "check",
                               str(folder), "--json", str(result)],
                              capture_output=True, text=True, timeout=1800)
        if not result.exists():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise BuildError(f"the new persona could not be checked: {last}")
        return json.loads(result.read_text(encoding="utf-8"))


def counts_of(script: Script, character: str) -> dict:
    counts = script.counts()
    return {"total": len(script.speeches), "speakers": len(counts),
            "character": counts[character]}


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def default_preamble(name: str, kind: str) -> str:
    """A dialogue frame's first line, or a chat frame's system line, when none is given."""
    if kind == "chat":
        return (f"You are {name}, a character in a play, speaking with a visitor. Answer as "
                f"{name}, in one short line of your own.")
    return f"{name} speaks with a visitor."


def _persona_toml(name: str, frame, base: Optional[str], base_sha256: Optional[str]) -> str:
    model = (f'base = {_quote(base)}\nbase_sha256 = "{base_sha256}"\nadapter = "adapter.gguf"'
             if base else 'model = "model.gguf"')
    lines = (f'system = {_quote(frame.system)}   # the model\'s own chat template, this first'
             if frame.kind == "chat" else f"preamble = {_quote(frame.preamble)}")
    # A chat reply ends at the template's end of turn, as trained; a line break is a
    # second, sure end: the paper gets one line.
    stop = 'stop = ["\\n"]\n' if frame.kind == "chat" else ""
    return f"""# Built by `typewriter persona build` (see card.md for how and from what).
name = {_quote(name)}
description = {_quote(f"{name}, fine-tuned on their lines in the play.")}
{model}

[frame]
kind = "{frame.kind}"
user_label = {_quote(frame.user_label)}   # every other speaker, in training
character_label = {_quote(frame.character_label)}
{lines}

[generation]
max_tokens = 60
temperature = 0.7
top_p = 0.95
top_k = 40
repeat_penalty = 1.1
seed = -1
{stop}"""


WHY_FRAME = {
    "dialogue": "the appliance prompts with this document (preamble line, then one "
                "`LABEL: text` line a turn), so the adapter learns exactly the text it will "
                "continue, and the reply's end of line, where the appliance stops.",
    "chat": "the base is an instruction-tuned model, and its own chat template is the "
            "conversation it was tuned to hold: the adapter keeps that (it answers what was "
            "asked, and stops at the template's end of turn, where the appliance stops) and "
            "learns the character's voice and name on top; the system line says who it is.",
}


def _frame_line(req: Request, r: dict, system: str) -> str:
    if req.frame == "chat":
        shape = (f"Frame: the base's own chat template, with the system line \"{system}\"; "
                 "every other speaker is the user")
        replay = "windows of the whole dialogue as one chat in that template"
        end = "its end-of-turn token"
    else:
        shape = f"Frame: every other speaker is `{req.user_label}`"
        replay = "windows of the whole dialogue relabelled to the frame's two labels"
        end = "its end of line"
    return (f"- {shape}, consecutive speeches by others are one turn; each example holds up "
            f"to {req.context} earlier exchanges; loss only on the reply and {end}. "
            f"{r['replay']} of each {r['batch']} fine-tuning rows are {replay} (replay: the "
            "play is not forgotten, and no other speaker's name is learned as a label).")


def _card(req: Request, s: dict, check: Optional[dict]) -> str:
    r = s["recipe"]
    route = (f"LoRA (rank {r['lora_rank']}, alpha {2 * r['lora_rank']}, on "
             f"{', '.join(r['lora_targets'])}) on the base `{r['base']}` (sha256 "
             f"`{(s['base_sha256'] or '')[:16]}...`), read into transformers dequantized and "
             f"trained at lr {r['lora_lr']}; shipped as a float16 llama.cpp adapter on "
             "the base's own GGUF" if r["base"] else
             f"from scratch: byte-level BPE ({r['vocab']} tokens) and a LLaMA of "
             f"{r['layers']} layers, width {r['embd']}, {r['heads']} heads, feed-forward "
             f"{r['ff']}; pretrained on all the dialogue, then fine-tuned on {s['character']}")
    command = " ".join(shlex.quote(a) for a in req.command) if req.command else "(library call)"
    lines = [
        f"# {s['name']}", "",
        f"A persona fine-tuned on the lines of {s['character']}.", "",
        "## Where the dialogue came from", "",
        f"- File: `{Path(s['dialogue']).name}` (sha256 `{s['dialogue_sha256'][:16]}...`), "
        f"{s['format']} format: {s['speeches']['total']} speeches by "
        f"{s['speeches']['speakers']} speakers, {s['speeches']['character']} by "
        f"{s['character']}.",
        *([f"- Source: {req.source}."] if req.source else []),
        f"- Licence: {req.licence}.", "",
        "## Training", "",
        f"- Route: {route}.",
        f"- Parameters: {s['params'] / 1e6:.2f} M"
        + (f", of which trained (the adapter): {s['trainable'] / 1e6:.2f} M" if r["base"]
           else "") + "; files: "
        + ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in s["files"].items()) + ".",
        _frame_line(req, r, s["system"]),
        f"- Examples: {s['examples']}, of which identity exchanges: "
        f"{s['identity_examples']} distinct" + (
            " (questions such as \"What is your name?\" answered with the character's name, "
            "repeated to about a quarter of the examples: a tiny model has to have seen its "
            "name asked for)." if s["identity_examples"] else "."),
        *([f"- Held out: every {r['held_out']}th of {s['character']}'s answers "
           f"({s['held_out']} replies, never trained on, nor replayed). NLL per reply token: "
           f"base alone {s['nll']['base']:.3f}, persona {s['nll']['persona']:.3f} nats. "
           "The base alone, by frame: " + ", ".join(
               f"{k} {v:.3f}" for k, v in s["nll"]["base_by_frame"].items()) + "."]
          if s["nll"] else []),
        f"- Steps: pretrain {r['pretrain_steps'] if not r['base'] else 0}, "
        f"fine-tune {r['finetune_steps']}; batch {r['batch']} x {r['window']} tokens; "
        f"seed {r['seed']}; final losses "
        + ", ".join(f"{k} {v:.3f}" for k, v in s["losses"].items())
        + f"; {s['train_seconds'] / 60:.1f} min on {os.cpu_count()} CPU cores "
        f"({req.device}, {s['processes']} process(es), mixed precision {s['precision']}).",
        *([f"- Why this frame and step count: {WHY_FRAME[req.frame]} The step count is what "
           "fits about 25 minutes of two CPU cores; the held-out NLL above says what it "
           "bought."] if r["base"] else []),
        "",
        "## Rebuild", "", "```", command, "```", "",
    ]
    if check is not None:
        from appliance.persona.check import table
        lines += ["## Check (`typewriter persona check`, greedy decoding)", "",
                  f"Gating probes passed: {'yes' if check['gating_passed'] else 'NO'}.", "",
                  "```", table(check), "```", ""]
    return "\n".join(lines)

