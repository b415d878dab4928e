"""The validator's sandbox, probed from inside: the same launcher, binds and limits it gets.

Each probe is a Python program started exactly as the validator child is
(validate.run_confined with validate.child_reads of a bundle in a store beside
another persona), printing one JSON line of what it tried and the errno it got.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.persona.bundle import verify
from appliance.persona.sandbox import PACKAGE_ROOT, Bubblewrap, SandboxError, UnitHardening, choose
from appliance.persona.validate import FILE_LIMIT, child_reads, run_confined, validate
from tests.appliance.persona.test_validate import PLENTY, make_bundle
from tests.conftest import typewriter

pytestmark = pytest.mark.skipif(not shutil.which("bwrap"),
                                reason="bubblewrap is not installed (tools/system-packages test)")

PRELUDE = """
import errno, json, os, socket, sys
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"""


@pytest.fixture
def store(tmp_path, tiny_model):
    """A persona store: the bundle under test, another persona, a staging folder."""
    root = tmp_path / "personas"
    make_bundle(root / "juliet", model=tiny_model)
    (root / "romeo").mkdir()
    (root / "romeo" / "persona.toml").write_text('name = "Romeo"\n')
    (root / ".staging-1").mkdir()
    return root


def inside(bundle: Path, code: str, sandbox=None) -> dict:
    """Run the probe as the validator child runs; its JSON line."""
    argv = [sys.executable, "-c", PRELUDE + code]
    child = run_confined(argv, child_reads(bundle), PLENTY, sandbox or choose())
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


def outside(code: str) -> dict:
    """The same probe unconfined: proof that what it tries works without the sandbox."""
    child = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True,
                           text=True, timeout=30, check=True)
    return json.loads(child.stdout)


def test_the_sandbox_here_is_bubblewrap():
    assert isinstance(choose(), Bubblewrap)


def test_the_child_reaches_no_network(store):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        probe = f"""
def tcp():
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
def udp_route():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # a route lookup: sends nothing
print(json.dumps({{"host_listener": attempt(tcp), "route_out": attempt(udp_route),
                  "interfaces": [name for _, name in socket.if_nameindex()]}}))
"""
        assert outside(probe)["host_listener"] == "ok"
        seen = inside(store / "juliet", probe)
    assert seen["host_listener"] in ("ENETUNREACH", "ECONNREFUSED")
    assert seen["route_out"] == "ENETUNREACH"
    assert seen["interfaces"] == ["lo"]


def test_the_child_writes_and_unlinks_only_in_its_work_folder(store):
    bundle = store / "juliet"
    probe = f"""
bundle, store = {str(bundle)!r}, {str(store)!r}
def create(path):
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
def work():
    create("/tmp/work-probe")
    os.unlink("/tmp/work-probe")
def past_the_limit():
    with open("/tmp/big", "wb", buffering=0) as f:
        f.write(bytes({FILE_LIMIT}))
        f.write(b"x")  # a write across the limit is cut short; one past it fails
print(json.dumps({{
    "create_in_bundle": attempt(lambda: create(bundle + "/new")),
    "unlink_in_bundle": attempt(lambda: os.unlink(bundle + "/model.gguf")),
    "rename_in_bundle": attempt(lambda: os.rename(bundle + "/persona.toml", bundle + "/x")),
    "create_in_store": attempt(lambda: create(store + "/romeo/new")),
    "create_in_package": attempt(lambda: create({str(PACKAGE_ROOT)!r} + "/new")),
    "create_in_usr": attempt(lambda: create("/usr/new")),
    "work_folder": attempt(work),
    "leave_in_tmp": attempt(lambda: create("/tmp/left-by-the-child-{os.getpid()}")),
    "write_past_the_limit": attempt(past_the_limit),
}}))
"""
    seen = inside(bundle, probe)
    assert {k: seen[k] for k in ("create_in_bundle", "unlink_in_bundle", "rename_in_bundle",
                                 "create_in_package", "create_in_usr")} == dict.fromkeys(
        ("create_in_bundle", "unlink_in_bundle", "rename_in_bundle", "create_in_package",
         "create_in_usr"), "EROFS")
    assert seen["create_in_store"] == "ENOENT"  # romeo is not there at all
    assert seen["work_folder"] == "ok" and seen["leave_in_tmp"] == "ok"
    assert seen["write_past_the_limit"] == "EFBIG"  # RLIMIT_FSIZE holds inside
    assert not Path(f"/tmp/left-by-the-child-{os.getpid()}").exists()  # a private /tmp
    verify(bundle)  # every file as sealed
    assert sorted(p.name for p in store.iterdir()) == [".staging-1", "juliet", "romeo"]


def test_the_child_sees_its_bundle_and_nothing_else_of_the_store(store):
    bundle = store / "juliet"
    probe = f"""
store = {str(store)!r}
def read(path):
    open(path, "rb").close()
print(json.dumps({{"store": sorted(os.listdir(store)),
                  "bundle": sorted(os.listdir(store + "/juliet")),
                  "romeo": attempt(lambda: read(store + "/romeo/persona.toml")),
                  "home": attempt(lambda: os.listdir(os.path.expanduser("~/.ssh")))}}))
"""
    seen = inside(bundle, probe)
    assert seen["store"] == ["juliet"]
    assert seen["bundle"] == sorted(p.name for p in bundle.iterdir())
    assert seen["romeo"] == "ENOENT" and seen["home"] == "ENOENT"


def test_an_adapter_child_reads_its_base_and_not_the_base_folder(tmp_path, tiny_model):
    from tests.conftest import adapter_bundle

    models = tmp_path / "models"
    models.mkdir()
    base = models / "base.gguf"
    base.write_bytes(tiny_model.read_bytes())
    (models / "other.gguf").write_bytes(b"GGUF")
    bundle = adapter_bundle(tmp_path / "personas" / "a", base, tiny_model, "Juliet")
    seen = inside(bundle, f"""
print(json.dumps({{"base": os.path.getsize({str(base)!r}),
                  "folder": os.listdir({str(models)!r})}}))
""")
    assert seen == {"base": base.stat().st_size, "folder": ["base.gguf"]}


def test_without_a_sandbox_tool_validation_is_refused(store, tmp_path, monkeypatch):
    with pytest.raises(SandboxError, match=r"apt install bubblewrap"):
        choose(path=str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    result = typewriter("persona", "validate", str(store / "juliet"))
    assert result.returncode == 2
    assert "not validated" in result.stderr and "apt install bubblewrap" in result.stderr
    assert "accepted" not in result.stdout


def test_a_sandbox_that_cannot_start_is_a_rejection(tmp_path):
    verdict = validate(tmp_path / "gone", PLENTY)  # nothing to bind
    assert not verdict.ok
    assert verdict.reason.startswith("sandbox: bubblewrap could not start the validator: bwrap:")


def test_the_service_sandbox_is_chosen_under_the_units_hardening_only():
    hardened = "Seccomp:\t2\nNoNewPrivs:\t1\n"
    assert isinstance(choose(status=hardened, environ={"INVOCATION_ID": "1"}), UnitHardening)
    assert isinstance(choose(status=hardened, environ={}), Bubblewrap)
    assert isinstance(choose(status="Seccomp:\t0\nNoNewPrivs:\t0\n",
                             environ={"INVOCATION_ID": "1"}), Bubblewrap)


def test_the_service_sandbox_refuses_outside_the_unit(store):
    """Here nothing filters system calls and the network is up: the child reads nothing."""
    verdict = validate(store / "juliet", PLENTY, sandbox=UnitHardening())
    assert [c.name for c in verdict.checks] == ["sandbox"]
    assert verdict.reason.startswith("sandbox: the unit's hardening does not confine")
    for missing in ("a system call filter", "no new privileges", "network: interface"):
        assert missing in verdict.reason
    assert "typewriter persona validate" in verdict.reason


def test_landlock_leaves_the_service_child_its_reads_only(store):
    """The service child's own confinement (sandbox.landlock), applied in a plain child here."""
    bundle = store / "juliet"
    with socket.create_server(("127.0.0.1", 0)) as server:
        probe = f"""
from pathlib import Path
from appliance.persona.sandbox import landlock
from appliance.persona.validate import child_reads
bundle = Path({str(bundle)!r})
try:
    abi = landlock(child_reads(bundle))
except OSError as e:
    print(json.dumps({{"abi": None, "why": e.strerror}}))
    sys.exit()
def create(path):
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
print(json.dumps({{
    "abi": abi,
    "bundle": attempt(lambda: open(bundle / "persona.toml").read()),
    "store": attempt(lambda: os.listdir(bundle.parent)),
    "romeo": attempt(lambda: open(bundle.parent / "romeo" / "persona.toml").read()),
    "unlink": attempt(lambda: os.unlink(bundle / "model.gguf")),
    "tmp": attempt(lambda: create("/tmp/landlock-probe-{os.getpid()}")),
    "tcp": attempt(lambda: socket.create_connection(
        ("127.0.0.1", {server.getsockname()[1]}), timeout=2).close()),
}}))
"""
        child = subprocess.run([sys.executable, "-c", PRELUDE + probe], capture_output=True,
                               text=True, timeout=30, cwd=PACKAGE_ROOT)
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    if seen["abi"] is None:
        pytest.skip(f"no Landlock in this kernel: {seen['why']}")
    assert seen["bundle"] == "ok"
    assert seen["store"] == seen["romeo"] == seen["unlink"] == seen["tmp"] == "EACCES"
    assert seen["tcp"] == ("EACCES" if seen["abi"] >= 4 else "ok")
    verify(bundle)


def test_the_validators_own_checks_pass_under_landlock(store):
    """What the service child does once confined: load and generate (llama.cpp's chatter goes
    to /dev/null, which the first ruleset forbade writing: every switch in the booted image was
    then rejected at `loads`)."""
    bundle = store / "juliet"
    probe = f"""
from pathlib import Path
from appliance.persona.sandbox import landlock
from appliance.persona.validate import child_reads, run_checks
bundle = Path({str(bundle)!r})
try:
    landlock(child_reads(bundle))
except OSError as e:
    print("no landlock:", e.strerror)
    sys.exit()
sys.exit(0 if run_checks(bundle, 1 << 30, 256, 1) else 3)
"""
    child = subprocess.run([sys.executable, "-c", PRELUDE + probe], capture_output=True,
                           text=True, timeout=120, cwd=PACKAGE_ROOT)
    if child.stdout.startswith("no landlock"):
        pytest.skip(child.stdout.strip())
    assert child.returncode == 0, child.stdout + child.stderr
    checks = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    assert [c["check"] for c in checks][-2:] == ["loads", "generates"]
    assert all(c["ok"] for c in checks), checks


def test_ctypes_callbacks_work_in_the_child_under_w_xor_x(store):
    """The unit's MemoryDenyWriteExecute, here by prctl(PR_SET_MDWE): libffi then keeps its
    closures in a memfd, which the file-size limit must leave room for (llama-cpp-python
    makes callbacks as it loads a model)."""
    probe = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
mdwe = libc.prctl(65, 1, 0, 0, 0) == 0  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
def callback():
    assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7
print(json.dumps({"mdwe": mdwe, "callback": attempt(callback)}))
"""
    seen = inside(store / "juliet", probe)
    if not seen["mdwe"]:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert seen["callback"] == "ok"
