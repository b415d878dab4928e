"""The config file: optional, checked all at once, overridden by the command line."""

from appliance.system.config import EXAMPLE, Config, ConfigError, load, merge
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import typewriter, wait_for


def test_the_example_is_valid_and_no_file_means_defaults(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(EXAMPLE)
    assert load(path).port == "/dev/typewriter"
    assert load(None) == Config()


def test_every_problem_is_reported_on_its_own_line(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('width = 5\nkv = "q4"\ncolour = 1\nprefill = "yes"\nthreads = true\n')
    try:
        load(path)
    except ConfigError as e:
        lines = str(e).splitlines()
    assert len(lines) == 5
    assert all(str(path) in line for line in lines)
    for needle in ("width: 5 is outside", "kv: 'q4'", "colour: unknown", "prefill: must be",
                   "threads: must be"):
        assert any(needle in line for line in lines), needle


def test_the_command_line_wins():
    merged = merge(Config(port="/dev/a", width=70), {"port": "/dev/b", "width": None})
    assert merged.port == "/dev/b" and merged.width == 70


def test_bad_config_stops_run_with_one_line_per_problem(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('width = 5\nsubmit = "shout"\n')
    result = typewriter("run", "--config", str(path), "--port", "/dev/null")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2


def test_run_takes_port_persona_and_width_from_the_file(tmp_path, script_persona):
    with SimulatedTypewriter(cps=2000, cr_seconds=0) as sim:
        path = tmp_path / "config.toml"
        path.write_text(f'port = "{sim.start()}"\npersona = "{script_persona}"\nwidth = 30\n'
                        'submit = "submit-key"\n')
        import subprocess
        import sys

        app = subprocess.Popen([sys.executable, "-m", "appliance.cli", "run", "--config",
                                str(path), "--state-dir", str(tmp_path / "state"),
                                "--control", str(tmp_path / "c.sock")],
                               stderr=subprocess.PIPE)
        try:
            sim.type_text("Hello\n\n")  # two returns do not send in submit-key mode
            assert not wait_for(lambda: "Good" in sim.paper.text(), 3)
            sim.press(0x85)
            assert wait_for(lambda: "home." in sim.paper.text(), 30)
            assert sim.wait_printed(10)
        finally:
            app.terminate()
            app.wait(10)
    reply_lines = [line for line in sim.paper.text().splitlines()[1:] if line]
    assert all(len(line) <= 30 for line in reply_lines) and len(reply_lines) >= 4
