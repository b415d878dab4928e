"""Pushing personas through a real sshd on 127.0.0.1, with a key limited to receiving."""

import getpass
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance.core.loop import Appliance
from appliance.engine.worker import Engine
from appliance.persona.bundle import seal
from appliance.persona.spec import Persona
from appliance.persona.store import PersonaStore
from appliance.persona.switcher import Switcher
from appliance.system.control import ControlServer
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.appliance.persona.test_validate import header_only
from tests.conftest import SCRIPT_REPLY, typewriter, wait_for

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not Path(SSHD).exists() or not shutil.which("ssh"),
                                reason="needs openssh-server and openssh-client (.ci/run "
                                       "installs them)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    def __init__(self, folder: Path):
        self.folder, self.port, self.user = folder, free_port(), getpass.getuser()
        self.store = folder / "store"
        self.control = folder / "no-appliance.sock"
        self.key = folder / "upload_key"
        for key in (folder / "host_key", self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
        receive = (f"{sys.executable} -m appliance.cli persona receive "
                   f"--personas {self.store} --control {self.control}")
        # Written by the tool users run, with the forced command pointing at this store.
        done = typewriter("persona", "authorize-key", str(self.key) + ".pub",
                          "--authorized-keys", str(folder / "authorized_keys"))
        assert done.returncode == 0, done.stderr
        line = (folder / "authorized_keys").read_text()
        assert line.startswith('restrict,command="') and "persona receive" in line
        key = line.split('" ', 1)[1]
        (folder / "authorized_keys").write_text(f'restrict,command="{receive}" {key}')
        (folder / "sshd_config").write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {folder / 'host_key'}
AuthorizedKeysFile {folder / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PidFile {folder / 'sshd.pid'}
SetEnv PYTHONPATH={Path(__file__).resolve().parents[3]}
""")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
                                     stderr=open(folder / "sshd.log", "w"))
        assert wait_for(self._listening, 10), (folder / "sshd.log").read_text()

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def ssh(self, *command: str, **kw) -> list:
        return ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                f"{self.user}@127.0.0.1", *command]

    def push(self, bundle: Path, *extra: str):
        return typewriter("persona", "push", str(bundle), "--host", f"{self.user}@127.0.0.1",
                          "--port", str(self.port), "--identity", str(self.key),
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "LogLevel=ERROR", *extra)

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sshd(tmp_path):
    server = Sshd(tmp_path)
    yield server
    server.close()


def persona_bundle(folder: Path, model: Path, name: str = "Juliet") -> Path:
    folder.mkdir(parents=True)
    shutil.copy(model, folder / "model.gguf")
    (folder / "persona.toml").write_text(
        f'name = "{name}"\nmodel = "model.gguf"\n[frame]\nuser_label = "ROMEO"\n'
        'character_label = "JULIET"\n')
    seal(folder)
    return folder


def staging_clean(store: Path) -> bool:
    area = store / ".staging"
    return not area.exists() or not os.listdir(area)


def test_push_and_activate_then_a_repush_is_a_no_op(sshd, tmp_path, tiny_model):
    bundle = persona_bundle(tmp_path / "juliet-v2", tiny_model)
    done = sshd.push(bundle, "--activate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   generates" in done.stdout and "juliet-v2: installed" in done.stdout
    store = PersonaStore(sshd.store)
    assert store.names() == ["juliet-v2"] and store.active == "juliet-v2"
    assert (sshd.store / "juliet-v2" / "model.gguf").read_bytes() == tiny_model.read_bytes()
    again = sshd.push(bundle)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already installed, unchanged" in again.stdout and "sent" not in again.stdout
    assert staging_clean(sshd.store)


def test_the_upload_key_runs_nothing_else(sshd):
    for command in (["cat", "/etc/hostname"], ["sh", "-c", "echo pwned"], []):
        done = subprocess.run(sshd.ssh(*command), input="", capture_output=True, text=True,
                              timeout=30)
        assert done.returncode != 0
        assert "error: not a persona upload" in done.stdout
        assert "pwned" not in done.stdout
    forward = subprocess.run(sshd.ssh("-W", f"127.0.0.1:{sshd.port}"), input="",
                             capture_output=True, text=True, timeout=30)
    assert "SSH-2.0" not in forward.stdout  # restrict: no forwarding


def test_a_rejected_bundle_changes_nothing(sshd, tmp_path, tiny_model):
    assert sshd.push(persona_bundle(tmp_path / "good", tiny_model), "--activate").returncode == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.gguf").write_bytes(header_only(tmp_path / "m.gguf", "bert"))
    (bad / "persona.toml").write_text('name = "B"\nmodel = "model.gguf"\n')
    seal(bad)
    done = sshd.push(bad, "--activate")
    assert done.returncode == 2
    assert "typewriter: error: rejected: architecture: 'bert'" in done.stderr
    store = PersonaStore(sshd.store)
    assert store.names() == ["good"] and store.active == "good"
    assert staging_clean(sshd.store)


def test_an_interrupted_push_leaves_nothing_behind(sshd, tmp_path, tiny_model):
    assert sshd.push(persona_bundle(tmp_path / "good", tiny_model), "--activate").returncode == 0
    client = subprocess.Popen(sshd.ssh(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    header = ('{"name": "big", "activate": true, "sums": "%s  model.gguf\\n", '
              '"files": [{"name": "model.gguf", "size": 500000000}]}' % ("0" * 64))
    client.stdin.write(f"TYPEWRITER-PUSH 1\n{header}\n".encode())
    client.stdin.flush()
    assert client.stdout.readline() == b"send\n"
    client.stdin.write(bytes(4 << 20))
    client.stdin.flush()
    assert wait_for(lambda: any((sshd.store / ".staging").glob("upload-*/model.gguf")), 10)
    client.kill()
    client.wait()
    assert wait_for(lambda: staging_clean(sshd.store), 10), os.listdir(sshd.store / ".staging")
    store = PersonaStore(sshd.store)
    assert store.names() == ["good"] and store.active == "good"


def test_path_traversal_in_an_upload_is_refused(sshd):
    header = ('{"name": "x", "sums": "%s  ../../evil\\n", '
              '"files": [{"name": "../../evil", "size": 1}]}' % ("0" * 64))
    done = subprocess.run(sshd.ssh(), input=f"TYPEWRITER-PUSH 1\n{header}\nX",
                          capture_output=True, text=True, timeout=30)
    assert "error: '../../evil' is not a plain file name" in done.stdout
    assert not (sshd.folder / "evil").exists() and not (sshd.store.parent / "evil").exists()


def test_push_and_activate_while_someone_types(sshd, tmp_path, tiny_model, script_model):
    """The old persona serves while the new one is validated and loaded: no key is lost,
    and the next reply comes from the new persona."""
    store = PersonaStore(sshd.store)
    with store.staging() as staged:
        store.install(persona_bundle(staged / "b", tiny_model), "old")
    store.set_active("old")

    def load(persona):
        return Engine(persona.model_path, n_ctx=512, n_threads=2).start()

    persona = Persona.load(store.path("old"))
    sim = SimulatedTypewriter(width=65, cps=400, cr_seconds=0.01)
    app = Appliance(persona, load(persona), sim.start(),
                    switcher=Switcher(store, load, n_ctx=512)).start()
    control = ControlServer(sshd.control, app.control).start()
    message = " ".join(f"word{i}" for i in range(40))  # 229 keys at 25 a second: ~9 s
    try:
        with app.running():
            assert wait_for(lambda: app.link.up, 10)
            typist = threading.Thread(target=sim.type_text, args=(message, 25))
            typist.start()
            time.sleep(1.0)
            done = sshd.push(persona_bundle(tmp_path / "juliet-v2", script_model), "--activate")
            switched_while_typing = typist.is_alive()
            typist.join()
            assert done.returncode == 0, done.stdout + done.stderr
            assert "juliet-v2: active now" in done.stdout
            assert switched_while_typing
            assert store.active == "juliet-v2" and store.previous == "old"
            sim.type_text("\n\n")
            assert wait_for(lambda: app.replies == 1 and app.idle, 30)
            assert app.conversation.history == [("user", message), ("character", SCRIPT_REPLY)]
    finally:
        control.close()
        sim.stop()
        app.engine.close()
