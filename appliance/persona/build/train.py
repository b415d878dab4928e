"""Training: a tokenizer and a small LLaMA from scratch, or LoRA on a pretrained GGUF base.

From scratch ends in a transformers LlamaForCausalLM and its byte-level BPE
tokenizer, which `export` writes as GGUF. On a base, the GGUF is read into
transformers (dequantized), a peft LoRA is trained, and `adapter` writes it as
llama.cpp's adapter; the text is tokenized by llama.cpp itself, from the base's
own vocabulary, so training sees exactly the tokens the appliance will.

The loop runs under Hugging Face accelerate, so `accelerate launch` spreads it
over processes or a GPU unchanged. Training state is saved in a work folder
every few steps and on Ctrl-C: the same command resumes it. Batches are drawn
from a generator seeded by the step, so a resumed run trains on what an
uninterrupted one would have.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from appliance.engine.synth import BOS, EOS
from appliance.persona.build import BuildError
from appliance.persona.build.examples import IGNORE, Example

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained model; saved with its checkpoints."""

    base: Optional[str] = None  # a known base's name or a GGUF path, or None: from scratch
    vocab: int = 2048
    embd: int = 256
    layers: int = 4
    heads: int = 4
    ff: int = 768
    context: int = 2048  # the GGUF's context length (RoPE: no learned positions)
    window: int = 128  # tokens per training sequence
    batch: int = 16
    pretrain_steps: int = 500
    finetune_steps: int = 200
    pretrain_lr: float = 3e-3
    finetune_lr: float = 1e-3
    replay: int = 4  # rows of each fine-tuning batch drawn from all the dialogue
    lora_rank: int = 16
    lora_lr: float = 5e-4
    # Fewer adapted projections decode faster (each adds two small matmuls a layer).
    lora_targets: Tuple[str, ...] = ("q_proj", "v_proj", "o_proj", "down_proj")
    held_out: int = 5  # every n-th character exchange is held out, to measure on
    seed: int = 0

    def bounded(self, max_steps: Optional[int]) -> Recipe:
        if max_steps is None:
            return self
        return replace(self, pretrain_steps=min(self.pretrain_steps, max_steps),
                       finetune_steps=min(self.finetune_steps, max_steps))

    @staticmethod
    def on_base(base: str, **sizes) -> Recipe:
        """LoRA defaults for a ~100M base on CPU: ~28 s a step at 8 x 192 on 2 cores (bf16)."""
        return Recipe(**{"base": base, "window": 192, "batch": 8, "finetune_steps": 50,
                         "replay": 2, **sizes})


# -- tokenizer -------------------------------------------------------------------------------


def train_tokenizer(text: str, size: int) -> Tokenizer:
    """A byte-level BPE vocabulary learned from the dialogue, with BOS and EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(text.splitlines(True), trainer)
    return tok


def tokenize_with(tok: Tokenizer, bos_id: int) -> Callable[[str, bool], List[int]]:
    def tokenize(text: str, bos: bool) -> List[int]:
        return ([bos_id] if bos else []) + tok.encode(text, add_special_tokens=False).ids
    return tokenize


# -- GGUF bases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """A base's tokenizer as llama.cpp runs it, and what a chat frame needs from its file."""

    tokenize: Callable[..., List[int]]  # (text, bos, special=False) -> ids
    chat_template: Optional[str]
    bos: str
    eos: str
    eos_id: int


def llama_vocabulary(path: Path) -> Vocabulary:
    """Tokenize as the appliance does: llama.cpp, the base's own vocabulary (vocab only)."""
    from llama_cpp import Llama

    try:
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    except ValueError as e:
        raise BuildError(f"--base {path}: llama.cpp could not read its vocabulary ({e}): "
                         "pass a LLaMA GGUF") from None

    def tokenize(text: str, bos: bool, special: bool = False) -> List[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=bos, special=special)

    from appliance.engine.worker import token_text

    return Vocabulary(tokenize, llm.metadata.get("tokenizer.chat_template"),
                      token_text(llm, llm.token_bos()), token_text(llm, llm.token_eos()),
                      llm.token_eos())


def llama_tokenizer(path: Path) -> Callable[..., List[int]]:
    return llama_vocabulary(path).tokenize


def check_gguf_base(path: Path) -> None:
    """A LLaMA GGUF (bounded header read), before minutes go into loading it."""
    from appliance.engine.gguf_header import HeaderError, read_header

    try:
        arch = read_header(path).architecture
    except HeaderError as e:
        raise BuildError(f"--base {e}") from None
    if arch != "llama":
        raise BuildError(f"--base {path}: architecture {arch!r}, not 'llama': a persona's "
                         "adapter is exported for LLaMA bases only")


def load_gguf_base(path: Path) -> LlamaForCausalLM:
    """The base GGUF in transformers, dequantized to float32 (transformers undoes Q/K order)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                    dtype=torch.float32)
    except Exception as e:
        raise BuildError(f"--base {path}: transformers could not load it "
                         f"({str(e).splitlines()[0][:120]}): pass a LLaMA GGUF") from None


def add_lora(model: LlamaForCausalLM, recipe: Recipe):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(recipe.seed)
    return get_peft_model(model, LoraConfig(
        r=recipe.lora_rank, lora_alpha=2 * recipe.lora_rank, lora_dropout=0.0,
        target_modules=list(recipe.lora_targets), task_type="CAUSAL_LM"))


def nll_per_token(model, examples: List[Example], pad: int) -> float:
    """Mean negative log-likelihood of the reply tokens (nats per token)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ex in examples:
            x = torch.tensor([ex.ids])
            labels = torch.tensor([ex.labels])
            logits = model(input_ids=x).logits[0, :-1].float()
            target = labels[0, 1:]
            keep = target != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep],
                                                       reduction="sum").item()
            count += int(keep.sum())
    return total / max(1, count)


# -- the model ---------------------------------------------------------------------------------


def new_model(recipe: Recipe, tok: Tokenizer) -> LlamaForCausalLM:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=recipe.vocab, hidden_size=recipe.embd, intermediate_size=recipe.ff,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads, max_position_embeddings=recipe.context,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=tok.token_to_id(BOS), eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(EOS))
    return LlamaForCausalLM(config)


# -- batches -----------------------------------------------------------------------------------


def stream_batch(ids: torch.Tensor, recipe: Recipe, step: int,
                 rows: int = 0) -> Tuple[torch.Tensor, ...]:
    """Random windows of the token stream (recipe.batch of them); every token is a target."""
    import torch

    g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    starts = torch.randint(0, len(ids) - recipe.window - 1, (rows or recipe.batch,), generator=g)
    x = torch.stack([ids[s:s + recipe.window] for s in starts.tolist()])
    return x, torch.ones_like(x), x.clone()


def example_batch(examples: List[Example], recipe: Recipe, step: int, pad: int,
                  replay: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    """Random examples, right-padded; only reply tokens are targets.

    With replay (the whole dialogue's token stream), recipe.replay rows are
    windows of it instead: a small model fine-tuned on a hundred speeches
    alone forgets the play and says its easiest line to everything.
    """
    import torch

    g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + 7919 + step)
    rows = recipe.batch - (recipe.replay if replay is not None else 0)
    picks = torch.randint(0, len(examples), (rows,), generator=g).tolist()
    if replay is not None and recipe.replay:
        windows = stream_batch(replay, recipe, step, recipe.replay)[0]
        examples = [*examples, *(Example(w.tolist(), w.tolist()) for w in windows)]
        picks += list(range(len(examples) - len(windows), len(examples)))
    width = max(len(examples[i].ids) for i in picks)
    x = torch.full((len(picks), width), pad)
    mask = torch.zeros_like(x)
    labels = torch.full_like(x, IGNORE)
    for row, i in enumerate(picks):
        n = len(examples[i].ids)
        x[row, :n] = torch.tensor(examples[i].ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(examples[i].labels)
    return x, mask, labels


# -- the loop ------------------------------------------------------------------------------------


class Stage:
    """One training stage (pretrain, finetune or lora), checkpointed in the work folder."""

    def __init__(self, name: str, model, steps: int, lr: float, work: Path,
                 batch: Callable[[int], Tuple], save_every: int = 50, accelerator=None):
        self.name, self.model, self.steps, self.lr = name, model, steps, lr
        self.checkpoint = work / f"{name}.pt"
        self.batch, self.save_every = batch, save_every
        self.accelerator = accelerator

    def run(self, progress) -> float:
        """Train to the last step (resuming a checkpoint); returns the final loss.

        Each of accelerate's processes takes its share of every batch's rows; only
        the main one writes checkpoints.
        """
        import torch
        from accelerate import Accelerator

        acc = self.accelerator or Accelerator(cpu=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)
        warmup = max(1, self.steps // 20)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
            (s + 1) / warmup, 0.1 + 0.45 * (1 + math.cos(math.pi * s / max(1, self.steps)))))
        step, loss = 0, float("nan")
        if self.checkpoint.exists():
            state = torch.load(self.checkpoint, weights_only=False)
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, loss = state["step"], state["loss"]
        task = progress.add_task(self.name, total=self.steps, completed=step, loss=loss,
                                 first=step)
        # Only the model is prepared: the scheduler steps once a step on every process.
        model = acc.prepare(self.model)
        model.train()
        rank, world = acc.process_index, acc.num_processes
        try:
            while step < self.steps:
                x, mask, labels = (t[rank::world].to(acc.device) for t in self.batch(step))
                out = model(input_ids=x, attention_mask=mask, labels=labels)
                acc.backward(out.loss)
                acc.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, loss = step + 1, acc.reduce(out.loss.detach(), "mean").item()
                progress.update(task, completed=step, loss=loss)
                if step % self.save_every == 0 or step == self.steps:
                    self._save(acc, optimizer, scheduler, step, loss)
                    _log_line(progress, task)
        except KeyboardInterrupt:
            self._save(acc, optimizer, scheduler, step, loss)
            raise BuildError(f"interrupted at {self.name} step {step} of {self.steps}; run the "
                             "same command again to resume") from None
        self.model = acc.unwrap_model(model)
        self.model.eval()
        return loss

    def _save(self, acc, optimizer, scheduler, step: int, loss: float) -> None:
        """Atomically: a checkpoint is whole or absent (only trainable weights, for LoRA)."""
        import torch

        if not acc.is_main_process:
            return
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        weights = {k: v for k, v in self.model.state_dict().items()
                   if self.name != "lora" or k in trainable}
        # Serialized in memory first: torch's own writer hides the errno of a full disk.
        data = io.BytesIO()
        torch.save({"model": weights, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": step, "loss": loss}, data)
        tmp = self.checkpoint.with_suffix(".tmp")
        try:
            tmp.write_bytes(data.getbuffer())
            os.replace(tmp, self.checkpoint)
        finally:
            tmp.unlink(missing_ok=True)


def _log_line(progress, task) -> None:
    """A plain progress line where the bar cannot be drawn (a log file, nohup, CI)."""
    if progress.disable or progress.console.is_terminal:
        return
    t = next(x for x in progress.tasks if x.id == task)
    done = t.completed - t.fields["first"]
    eta = (t.elapsed or 0) / done * (t.total - t.completed) / 60 if done else float("nan")
    progress.console.print(f"{t.description} step {int(t.completed)}/{int(t.total)} loss "
                           f"{t.fields['loss']:.3f}, {t.elapsed or 0:.0f} s so far, "
                           f"ETA {eta:.1f} min")


def progress_bar(disable: bool = False):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), disable=disable)
