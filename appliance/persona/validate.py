"""Is a persona bundle safe to switch to? Decided in a sandboxed child process with limits.

A bundle comes from outside (an SSH upload, a USB stick), and llama.cpp's GGUF
parser has had memory-safety bugs, so everything that reads the model runs in a
separate process, in a sandbox (appliance.persona.sandbox: bubblewrap, or inside
the service its unit's hardening plus Landlock) and under address-space, CPU,
file-size and wall-clock limits. With no sandbox it is not run at all
(SandboxError). A crash, a hang or a refusal there leaves the running appliance
untouched. The child reports one JSON line per check, the first on its own
confinement, so even a crash says how far it got.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from appliance.engine.gguf_header import Header, HeaderError, read_header
from appliance.persona.bundle import BundleError, verify
from appliance.persona.sandbox import Sandbox, SandboxError, choose, confine, runtime_paths
from appliance.persona.spec import Persona, PersonaError, make_frame, tokens_of
from appliance.system.memory import available_memory  # the cgroup's limit counts too

# Decoder architectures this llama.cpp runs with our frames.
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "granite", "smollm3")
RUNTIME_OVERHEAD = 128 << 20  # library, compute buffers and Python: measured ~77 MB + margin
KV_BYTES_PER_VALUE = 34 / 32  # the appliance's default Q8_0 KV cache
PROBE_CTX = 256
MAX_TOML = 1 << 20  # the parent reads persona.toml for the base's path; none is near this


@dataclass(frozen=True)
class Limits:
    """What the board can give the new model, and how long validation may take."""

    memory: int  # bytes the model may use (RAM available once the old model is closed)
    n_ctx: int = 2048
    seconds: float = 120.0
    threads: int = 1

    @staticmethod
    def of_this_board(n_ctx: int = 2048, freed: int = 0, seconds: float = 120.0) -> Limits:
        """MemAvailable now, plus what closing the active model will free."""
        return Limits(memory=available_memory() + freed, n_ctx=n_ctx, seconds=seconds,
                      threads=max(1, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Verdict:
    bundle: Path
    checks: List[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and self.checks[-1].name == \
            "generates"

    @property
    def reason(self) -> str:
        """The first failure, as one line."""
        failed = next((c for c in self.checks if not c.ok), None)
        return f"{failed.name}: {failed.detail}" if failed else ""

    def table(self) -> str:
        return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:12} {c.detail}"
                         for c in self.checks)


def needed_memory(header: Header, n_ctx: int) -> int:
    """Weights, a Q8_0 KV cache of n_ctx tokens, and the runtime around them."""
    layers = int(header.arch_value("block_count", 0) or 0)
    embd = int(header.arch_value("embedding_length", 0) or 0)
    heads = int(header.arch_value("attention.head_count", 1) or 1)
    kv_heads = int(header.arch_value("attention.head_count_kv", heads) or heads)
    kv = 2 * layers * n_ctx * (embd // heads * kv_heads) * KV_BYTES_PER_VALUE
    return header.file_size - header.data_start + int(kv) + RUNTIME_OVERHEAD


def validate(bundle: Path, limits: Limits, sandbox: Optional[Sandbox] = None) -> Verdict:
    """Run every check on the bundle in a limited, sandboxed child process.

    `sandbox`: the one this process gets (`sandbox.choose`) unless given; raises
    SandboxError where there is none, rather than validate unconfined.
    """
    sandbox = sandbox or choose()
    bundle = Path(bundle).resolve()
    verdict = Verdict(bundle)
    try:
        reads = child_reads(bundle)
    except PersonaError as e:
        verdict.checks.append(Check("persona", False, str(e)))
        return verdict
    command = [sys.executable, "-m", "appliance.persona.validate", str(bundle), "--memory",
               str(limits.memory), "--ctx", str(limits.n_ctx), "--threads", str(limits.threads),
               "--sandbox", sandbox.name, *(f"--read={path}" for path in reads)]
    started = time.monotonic()
    try:
        child = run_confined(command, reads, limits, sandbox)
    except subprocess.TimeoutExpired as e:
        verdict.checks += _parse(e.stdout)
        verdict.checks.append(Check("time", False, f"validation took more than "
                                    f"{limits.seconds:.0f} s; the model is too slow or hangs"))
        return verdict
    verdict.checks += _parse(child.stdout)
    unstarted = None if verdict.checks else sandbox.start_error(child.stderr)
    if unstarted:
        verdict.checks.append(Check("sandbox", False, unstarted))
    elif child.returncode < 0:
        verdict.checks.append(Check("crash", False, f"the validator was killed by signal "
                                    f"{-child.returncode} after {time.monotonic() - started:.1f} s"
                                    ": this model file is unsafe to load"))
    elif child.returncode and all(c.ok for c in verdict.checks):
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        verdict.checks.append(Check("crash", False, f"the validator failed: {last}"))
    return verdict


def run_confined(argv: List[str], reads: Sequence[Path], limits: Limits,
                 sandbox: Sandbox) -> subprocess.CompletedProcess:
    """argv in the sandbox, under the limits: how the validator child (or a test's probe) runs.

    Raises subprocess.TimeoutExpired after limits.seconds.
    """
    return subprocess.run(sandbox.command(argv, reads), capture_output=True, text=True,
                          timeout=limits.seconds, preexec_fn=_limit(limits), env=_child_env())


def child_reads(bundle: Path) -> List[Path]:
    """What the child may read besides the system: Python, the package, the bundle, its base.

    The base's path comes from persona.toml (plain TOML, no model parsing); a bundle
    whose persona.toml does not load gets no base, and the child reports why. Raises
    PersonaError for a model or adapter outside the bundle: only the bundle is bound.
    """
    reads = runtime_paths() + [bundle]
    try:
        if (bundle / "persona.toml").stat().st_size > MAX_TOML:
            return reads  # the child refuses it, in the sandbox
        persona = Persona.load(bundle)
    except (OSError, PersonaError):
        return reads
    inside, key = ((persona.adapter_path, "adapter") if persona.base is not None
                   else (persona.model_path, "model"))
    if inside.resolve().parent != bundle.resolve():
        raise PersonaError(f"{bundle / 'persona.toml'}: {key}: {inside} is "
                           "outside the bundle; give a file name inside it")
    if persona.base is not None and persona.model_path.is_file():
        reads.append(persona.model_path)
    return reads


def _parse(stdout) -> List[Check]:
    if isinstance(stdout, bytes):
        stdout = stdout.decode("utf-8", "replace")
    checks = []
    for line in (stdout or "").splitlines():
        try:
            item = json.loads(line)
            checks.append(Check(str(item["check"]), bool(item["ok"]), str(item["detail"])))
        except (ValueError, KeyError, TypeError):
            continue
    return checks


def _child_env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # the child may write no files
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "") if env.get(
        "PYTHONPATH") else root
    return env


# Under MemoryDenyWriteExecute (the unit) libffi puts every ctypes callback in a memfd it
# grows and maps twice; a file-size limit of 0 made each one a MemoryError, and every
# persona switch in the booted image failed at `loads`. Writes are the sandbox's to stop;
# this only bounds them.
FILE_LIMIT = 8 << 20


def _limit(limits: Limits) -> Callable[[], None]:
    """Address space, CPU time, small files only, no core dumps: for the child only."""
    # Virtual address space: the model, its cache, and room for the interpreter, the
    # library's mappings and per-thread arenas.
    address_space = limits.memory + (1 << 30) + limits.threads * (64 << 20)
    cpu = int(limits.seconds * max(1, limits.threads)) + 5

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


# -- the child ------------------------------------------------------------------------


def _report(name: str, ok: bool, detail: str) -> None:
    print(json.dumps({"check": name, "ok": ok, "detail": detail}), flush=True)


def run_checks(bundle: Path, memory: int, n_ctx: int, threads: int) -> bool:
    """The checks, in order, each reported as it finishes; stops at the first failure."""
    try:
        verify(bundle)
        _report("checksums", True, "every file matches SHA256SUMS")
        persona = Persona.load(bundle)
        _report("persona", True, f"{persona.name}: persona.toml is valid")
    except (BundleError, PersonaError) as e:
        _report("persona" if isinstance(e, PersonaError) else "checksums", False, str(e))
        return False
    if persona.base is not None:
        try:
            persona.check_base()
        except PersonaError as e:
            _report("base", False, str(e))
            return False
        _report("base", True, f"{persona.base}: sha256 matches the adapter's base")
    try:
        header = read_header(persona.model_path)
    except HeaderError as e:
        _report("header", False, str(e))
        return False
    _report("header", True, f"GGUF v{header.version}, {len(header.tensors)} tensors, "
            f"{header.file_size / 1e6:.1f} MB")
    if header.architecture not in ARCHITECTURES:
        _report("architecture", False, f"{header.architecture or 'none'!r} is not a model "
                f"architecture the appliance runs ({', '.join(ARCHITECTURES)})")
        return False
    _report("architecture", True, header.architecture)
    need = needed_memory(header, n_ctx)
    if persona.adapter_path is not None:
        adapter = _adapter_header(persona.adapter_path, header)
        if adapter is None:
            return False
        need += adapter.file_size
    if need > memory:
        _report("memory", False, f"needs ~{need >> 20} MiB with a {n_ctx}-token context, the "
                f"board has {memory >> 20} MiB: quantize smaller (Q4_0) or lower the context")
        return False
    _report("memory", True, f"needs ~{need >> 20} of {memory >> 20} MiB")
    return _template(persona, header) and _generates(persona, threads)


def _adapter_header(path: Path, base: Header) -> Optional[Header]:
    """A LoRA adapter GGUF for this base's architecture (bounded header read), else None."""
    try:
        header = read_header(path)
    except HeaderError as e:
        _report("adapter", False, str(e))
        return None
    kind = (header.metadata.get("general.type"), header.metadata.get("adapter.type"))
    if kind != ("adapter", "lora"):
        _report("adapter", False, f"{path.name}: general.type {kind[0]!r} and adapter.type "
                f"{kind[1]!r}, not a LoRA adapter ('adapter', 'lora'): export it with "
                "typewriter persona build")
        return None
    if header.architecture != base.architecture:
        _report("adapter", False, f"{path.name} is for {header.architecture!r}, its base is "
                f"{base.architecture!r}: rebuild the persona on its base")
        return None
    _report("adapter", True, f"LoRA, {len(header.tensors)} tensors, "
            f"{header.file_size / 1e6:.1f} MB")
    return header


def _template(persona: Persona, header: Header) -> bool:
    """Any chat template in the model renders in the sandbox, whatever frame is used."""
    template = header.metadata.get("tokenizer.chat_template")
    try:
        if template:
            as_chat = replace(persona, frame=replace(persona.frame, kind="chat"))
            frame = make_frame(as_chat, template, "", "")
            frame.render([("user", "hello"), ("character", "hello")], "who are you?")
        else:
            make_frame(persona, None, "", "")
    except PersonaError as e:
        _report("template", False, str(e))
        return False
    _report("template", True, "renders in the sandbox" if template else "none in the model")
    return True


def _generates(persona: Persona, threads: int) -> bool:
    from appliance.engine.worker import Engine, EngineError, Sampling

    started = time.monotonic()
    try:
        engine = Engine(persona.model_path, n_ctx=PROBE_CTX, n_threads=threads, seed=0,
                        adapter=persona.adapter_path).start()
    except EngineError as e:
        _report("loads", False, str(e))
        return False
    try:
        _report("loads", True, f"in {time.monotonic() - started:.1f} s")
        frame = make_frame(persona, engine.chat_template, engine.bos, engine.eos)
        reply = engine.generate(tokens_of(engine.tokenize, frame.segments([], "Hello.")),
                                frame.stops,
                                Sampling(max_tokens=4, temperature=0.0))
        text = reply.text()
        _report("generates", True, f"{reply.tokens} tokens: {text.strip()[:40]!r}")
        return True
    except Exception as e:  # noqa: BLE001 - any failure here is a verdict, not a crash
        _report("generates", False, f"{type(e).__name__}: {e}")
        return False
    finally:
        engine.close()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m appliance.persona.validate")
    p.add_argument("bundle")
    p.add_argument("--memory", type=int, required=True)
    p.add_argument("--ctx", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sandbox", required=True, help="the sandbox the parent started it in")
    p.add_argument("--read", type=Path, action="append", default=[],
                   help="a path the child may read (Landlock's list inside the service)")
    args = p.parse_args(argv)
    bundle = Path(args.bundle)
    try:
        _report("sandbox", True, confine(args.sandbox, bundle, args.read))
    except SandboxError as e:
        _report("sandbox", False, str(e))
        return 1
    return 0 if run_checks(bundle, args.memory, args.ctx, args.threads) else 1


if __name__ == "__main__":
    sys.exit(main())
