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
    preamble: str = ""
    context: int = 3  # earlier exchanges in each example
    identity: bool = True
    quant: str = "q4_0"
    licence: str = "not stated"
    source: str = ""  # where the dialogue came from, for the card
    replace: bool = False
    work: Optional[Path] = None
    check: bool = True
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
        from appliance.persona.build.train import base_parts
        base_parts(Path(req.base))
    script = read(req.dialogue, req.format)
    character = script.speaker(req.character)
    counts = script.counts()
    say(f"{script.path}: {script.format} format, {len(script.speeches)} speeches, "
        f"{len(counts)} speakers; {character}: {counts[character]} speeches")
    if counts[character] < 2:
        raise BuildError(f"{script.path}: {character} has only {counts[character]} speech; "
                         "a persona needs at least 2: pick a character with more lines")
    recipe = (recipe or Recipe(base=req.base)).bounded(req.max_steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(req.work) if req.work else out.parent / f".{out.name}.work"
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # from a build that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; a bundle is not
    try:
        summary = _assemble(req, recipe, script, character, work, tmp, say)
        _move_into_place(tmp, out)
    except OSError as e:
        if e.errno in NO_ROOM:
            raise BuildError(f"no room to write under {out.parent} ({e.strerror}): free some "
                             "space or pick another --out") from None
        raise BuildError(f"cannot write under {out.parent} ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if work.exists() and not any(work.glob("*.pt")):
            shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return Result(out, summary)


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


def _fingerprint(req: Request, recipe, script: Script, character: str) -> dict:
    return {"dialogue_sha256": hashlib.sha256(script.path.read_bytes()).hexdigest(),
            "character": character, "user_label": req.user_label, "preamble": req.preamble,
            "context": req.context, "identity": req.identity, "recipe": asdict(recipe)}


def _assemble(req: Request, recipe, script: Script, character: str, work: Path, tmp: Path,
              say: Callable[[str], None]) -> dict:
    import torch

    from appliance.persona.spec import DialogueFrame
    from appliance.persona.build import examples as ex
    from appliance.persona.build.export import export
    from appliance.persona.build.train import (
        Stage,
        base_parts,
        example_batch,
        load_base,
        new_model,
        progress_bar,
        stream_batch,
        tokenize_with,
        train_tokenizer,
    )

    torch.set_num_threads(os.cpu_count() or 1)
    name = character_name(character)
    preamble = req.preamble or f"{name} speaks with a visitor."
    frame_config = ex.character_frame(character, name, req.user_label, preamble)
    frame = DialogueFrame(frame_config)
    fingerprint = _fingerprint(req, recipe, script, character)
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "build.json"
    if saved.exists() and json.loads(saved.read_text()) != fingerprint:
        raise BuildError(f"{work} holds checkpoints of another build: remove it to start over, "
                         "or run the command that made it to resume")
    saved.write_text(json.dumps(fingerprint, indent=1))

    started = time.monotonic()
    losses = {}
    if recipe.base is None:
        tok_path = work / "tokenizer.json"
        if tok_path.exists():
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(str(tok_path))
        else:
            tok = train_tokenizer(ex.pretraining_text(script), recipe.vocab)
            tok.save(str(tok_path))
        model = new_model(recipe, tok)
    else:
        _, tok = base_parts(Path(recipe.base))
        model = load_base(Path(recipe.base))
    bos, pad = model.config.bos_token_id, model.config.eos_token_id
    if bos is None or pad is None:
        raise BuildError(f"--base {recipe.base}: config.json names no bos_token_id or "
                         "eos_token_id: add them")
    tokenize = tokenize_with(tok, bos)

    conversation = ex.turns(script, character)
    examples = ex.frame_examples(conversation, frame, tokenize, req.context, recipe.window)
    identity = []
    if req.identity:
        pairs = ex.identity(name)
        identity = ex.frame_examples(pairs, frame, tokenize, 0, recipe.window)
        examples += identity * max(1, len(examples) // (6 * len(identity)))
    if not examples:
        raise BuildError(f"{script.path}: no speech of {character} answers another speaker: "
                         "a persona learns from replies")
    say(f"{len(examples)} training examples ({len(identity)} identity exchanges, "
        f"{'repeated' if req.identity else 'none'}); frame: {req.user_label} -> {character}")

    lines = ex.pretraining_text(script).splitlines(True)
    ids = torch.tensor([i for enc in tok.encode_batch(lines, add_special_tokens=False)
                        for i in enc.ids])
    if len(ids) <= recipe.window + 1:
        raise BuildError(f"{script.path}: too little dialogue to train on ({len(ids)} "
                         "tokens): give a longer script")
    with progress_bar() as progress:
        if recipe.base is None:
            losses["pretrain"] = Stage(
                "pretrain", model, recipe.pretrain_steps, recipe.pretrain_lr, work,
                lambda step: stream_batch(ids, recipe, step)).run(progress)
            losses["finetune"] = Stage(
                "finetune", model, recipe.finetune_steps, recipe.finetune_lr, work,
                lambda step: example_batch(examples, recipe, step, pad, ids)).run(progress)
        else:
            from peft import LoraConfig, get_peft_model

            lora = get_peft_model(model, LoraConfig(
                r=recipe.lora_rank, lora_alpha=2 * recipe.lora_rank, lora_dropout=0.0,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                "up_proj", "down_proj"], task_type="CAUSAL_LM"))
            losses["lora"] = Stage(
                "lora", lora, recipe.finetune_steps, recipe.finetune_lr * 4, work,
                lambda step: example_batch(examples, recipe, step, pad, ids)).run(progress)
            model = lora.merge_and_unload()
    trained = time.monotonic() - started

    export(model, tok, tmp / "model.gguf", req.quant)
    (tmp / "persona.toml").write_text(_persona_toml(name, frame_config), encoding="utf-8")
    summary = {
        "character": character, "name": name, "dialogue": str(script.path),
        "format": script.format, "speeches": counts_of(script, character),
        "examples": len(examples), "identity_examples": len(identity) if req.identity else 0,
        "recipe": asdict(recipe), "losses": losses, "train_seconds": round(trained, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "quant": req.quant, "model_bytes": (tmp / "model.gguf").stat().st_size,
        "dialogue_sha256": fingerprint["dialogue_sha256"],
    }
    check = None
    if req.check:
        from appliance.persona.check import run_check
        check = run_check(tmp)
    (tmp / "card.md").write_text(_card(req, summary, check), encoding="utf-8")
    from appliance.persona.bundle import seal
    seal(tmp)
    return {**summary, "check": check}


def counts_of(script: Script, character: str) -> dict:
    counts = script.counts()
    return {"total": len(script.speeches), "speakers": len(counts),
            "character": counts[character]}


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _persona_toml(name: str, frame) -> str:
    return f"""# Built by `typewriter persona build` (see card.md for how and from what).
name = {_quote(name)}
description = {_quote(f"{name}, fine-tuned on their lines in the play.")}
model = "model.gguf"

[frame]
kind = "dialogue"
user_label = {_quote(frame.user_label)}   # every other speaker, in training
character_label = {_quote(frame.character_label)}
preamble = {_quote(frame.preamble)}

[generation]
max_tokens = 60
temperature = 0.7
top_p = 0.95
top_k = 40
repeat_penalty = 1.1
seed = -1
"""


def _card(req: Request, s: dict, check: Optional[dict]) -> str:
    r = s["recipe"]
    route = (f"LoRA (rank {r['lora_rank']}) on `{r['base']}`, merged" if r["base"] else
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
        f"- Parameters: {s['params'] / 1e6:.2f} M; model file {s['quant']}, "
        f"{s['model_bytes'] / 1e6:.1f} MB.",
        f"- Frame: every other speaker is `{req.user_label}`, consecutive speeches by others "
        f"are one turn; each example holds up to {req.context} earlier exchanges; loss only on "
        f"the reply and its end of line. {r['replay']} of each {r['batch']} fine-tuning rows "
        "are windows of the whole dialogue (replay, so the play is not forgotten).",
        f"- Examples: {s['examples']}, of which identity exchanges: "
        f"{s['identity_examples']} distinct" + (
            " (questions such as \"What is your name?\" answered with the character's name, "
            "repeated to about a sixth of the examples: a tiny model has to have seen its "
            "name asked for)." if s["identity_examples"] else "."),
        f"- Steps: pretrain {r['pretrain_steps'] if not r['base'] else 0}, "
        f"fine-tune {r['finetune_steps']}; batch {r['batch']} x {r['window']} tokens; "
        f"seed {r['seed']}; final losses "
        + ", ".join(f"{k} {v:.3f}" for k, v in s["losses"].items())
        + f"; {s['train_seconds'] / 60:.1f} min on {os.cpu_count()} CPU cores.", "",
        "## Rebuild", "", "```", command, "```", "",
    ]
    if check is not None:
        from appliance.persona.check import table
        lines += ["## Check (`typewriter persona check`, greedy decoding)", "",
                  f"Gating probes passed: {'yes' if check['gating_passed'] else 'NO'}.", "",
                  "```", table(check), "```", ""]
    return "\n".join(lines)

