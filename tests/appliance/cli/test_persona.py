"""`typewriter persona list|use|rollback|remove`, with and without a running appliance."""

import json
import subprocess
import sys

from appliance.persona.store import PersonaStore
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.appliance.persona.test_transfer import persona_bundle
from tests.conftest import typewriter, wait_for


def installed(tmp_path, **models):
    store = PersonaStore(tmp_path / "store")
    for name, model in models.items():
        with store.staging() as staged:
            store.install(persona_bundle(staged / "b", model, name.title()), name)
    return store


def persona(store, *args):
    return typewriter("persona", *args, "--personas", str(store.root), "--control",
                      str(store.root.parent / "no.sock"))


def test_list_use_rollback_remove_without_an_appliance(tmp_path, tiny_model, script_model):
    store = installed(tmp_path, noise=tiny_model, juliet=script_model)
    assert persona(store, "list").stdout.split() == ["juliet", "noise"]
    used = persona(store, "use", "juliet")
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == "juliet: active from the appliance's next start"
    assert persona(store, "use", "noise").returncode == 0
    assert persona(store, "list").stdout.split() == ["previous", "juliet", "*", "noise"]
    assert persona(store, "rollback").stdout.strip().startswith("juliet: active")
    refused = persona(store, "remove", "juliet")
    assert refused.returncode == 2
    assert "is the active persona: switch to another one first" in refused.stderr
    assert persona(store, "remove", "noise").returncode == 0
    missing = persona(store, "use", "noise")
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("typewriter: error: no persona 'noise' is installed "
                                      "(installed: juliet); push it with `typewriter persona "
                                      "push`")


def test_use_switches_a_running_appliance(tmp_path, tiny_model, script_model):
    store = installed(tmp_path, noise=tiny_model, juliet=script_model)
    store.set_active("noise")
    sock = tmp_path / "c.sock"
    with SimulatedTypewriter(width=65, cps=2000, cr_seconds=0) as sim:
        app = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "run", "--port", sim.start(),
             "--personas", str(store.root), "--state-dir", str(tmp_path / "state"),
             "--control", str(sock), "--ctx", "512"], stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: sock.exists(), 60), app.stderr.read() if app.poll() else ""
            status = json.loads(typewriter("ctl", "status", "--json", "--control",
                                           str(sock)).stdout)
            assert status["persona"] == "Noise"
            used = typewriter("persona", "use", "juliet", "--personas", str(store.root),
                              "--control", str(sock))
            assert used.stdout.strip() == "juliet: active now", used.stderr
            status = json.loads(typewriter("ctl", "status", "--json", "--control",
                                           str(sock)).stdout)
            assert status["persona"] == "Juliet" and store.active == "juliet"
            sim.type_text("Hello\n\n")
            assert wait_for(lambda: "home." in sim.paper.text(), 60)
        finally:
            app.terminate()
            app.wait(30)
