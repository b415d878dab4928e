"""The image boots under its own systemd in an emulated arm64 machine and answers a typewriter.

From the stand-in base (`image stand-in`, cached), the aarch64 wheelhouse (its engine
wheel cached) and the tiny persona, `image build` makes an image; QEMU boots it (TCG,
`virt`, 2 cores, 1 GiB) with the simulated typewriter on its PL011 (ttyAMA0, the Pi's
GPIO UART). Checked inside, through the stand-in's root shell on hvc1: the first boot
installs the .debs and wheels offline, typewriter.service reaches READY under the image's
systemd, a typed message is answered on the paper; a killed appliance is restarted and
loses no acknowledged key; an unplugged line leaves it waiting (STATUS says so, no
restart), and plugged back it answers. The figures are printed (pytest -s) and written to
$TYPEWRITER_BOOT_FIGURES when set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import tty
from pathlib import Path

import pytest

from tests.conftest import typewriter

pytestmark = pytest.mark.slow

MESSAGE = "Hello Juliet"


@pytest.fixture(scope="session")
def stand_in(tmp_path_factory) -> Path:
    for tool in ("debootstrap", "qemu-system-aarch64", "mkfs.vfat", "depmod"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"{tool} not installed: apt-get install debootstrap qemu-system-arm "
                        "dosfstools kmod")
    out = tmp_path_factory.mktemp("stand-in") / "base.img"
    started = time.monotonic()
    done = typewriter("image", "stand-in", "--release", "bookworm", "--out", str(out),
                      timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    FIGURES["stand-in (s)"] = round(time.monotonic() - started, 1)
    FIGURES["stand-in"] = done.stdout.strip()
    return out


FIGURES: dict = {}


def wait(condition, timeout, every=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    return condition()


def unit(shell, name="typewriter"):
    status, out = shell.run(f"systemctl show -p ActiveState -p SubState -p StatusText "
                            f"-p NRestarts -p MainPID -p Result {name}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def service_log(shell, lines: int = 40) -> str:
    """The service's own log in the guest, for a failure's message."""
    return shell.run(f"journalctl -b -u typewriter --no-pager | tail -{lines}")[1]


def replying(shell) -> bool:
    """The appliance in the guest is generating, printing or saying something (or cannot say)."""
    status, out = shell.run("/opt/typewriter/venv/bin/typewriter ctl status --json", timeout=120)
    try:
        return status != 0 or not json.loads(out[out.index("{"):])["idle"]
    except (ValueError, KeyError):
        return True


def test_the_image_boots_and_answers_the_typewriter(tmp_path, stand_in, aarch64_wheelhouse,
                                                    bundle, ssh_key):
    from firmware_bridge.host.simulator import SimulatedTypewriter
    from image.qemu import Guest, Shell, host_linked, wait_reply

    image = tmp_path / "typewriter.img"
    started = time.monotonic()
    done = typewriter("image", "build", "--base", str(stand_in), "--wheelhouse",
                      str(aarch64_wheelhouse), "--ssh-key", str(ssh_key), "--persona",
                      str(bundle), "--out", str(image), timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    FIGURES["image build (s)"] = round(time.monotonic() - started, 1)
    assert "Debian packages for espeak-ng and alsa-utils" in done.stdout, done.stdout

    console = open(tmp_path / "console.log", "w")
    sock = tmp_path / "shell.sock"
    guest = Guest(image, console=console, shell=sock)
    assert guest.machine == "virt"
    sim = SimulatedTypewriter(cps=400, cr_seconds=0.01)
    fd = os.open(sim.start(), os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    guest.start(fd)
    shell = None
    try:
        shell = Shell(sock, timeout=60)
        shell.wait_ready(1200)
        FIGURES["boot to a shell (s)"] = round(time.monotonic() - guest.started, 1)
        _, uptime = shell.run("cut -d' ' -f1 /proc/uptime")
        FIGURES["guest uptime at shell (s)"] = float(uptime.split()[0])

        # First boot: the offline installer, then the service under the image's systemd.
        assert wait(lambda: unit(shell, "typewriter-firstboot.service")["ActiveState"] in
                    ("active", "failed"), 1500, 5)
        first = unit(shell, "typewriter-firstboot.service")
        _, journal = shell.run("journalctl -b -u typewriter-firstboot --no-pager | tail -40")
        assert first["ActiveState"] == "active", journal
        status, _ = shell.run("dpkg -s espeak-ng alsa-utils >/dev/null && command -v "
                              "espeak-ng aplay")
        assert status == 0, "espeak-ng and alsa-utils installed from the image's .debs"
        status, out = shell.run("/opt/typewriter/venv/bin/python -c 'import gpiozero, lgpio'")
        assert status == 0, out
        assert wait(lambda: unit(shell)["SubState"] == "running", 900, 2), unit(shell)
        FIGURES["boot to READY (s)"] = round(time.monotonic() - guest.started, 1)
        _, out = shell.run("systemctl show -p ActiveEnterTimestampMonotonic typewriter; "
                           "cut -d' ' -f1 /proc/uptime")
        assert "connected" in unit(shell)["StatusText"], unit(shell)
        assert wait(lambda: host_linked(sim), 60)

        # A message, and its reply on the paper.
        asked = time.monotonic()
        sim.type_text(MESSAGE + "\n\n", cps=20)
        paper = wait_reply(sim, MESSAGE, 600, busy=lambda: replying(shell))
        FIGURES["first reply (s after submit)"] = round(time.monotonic() - asked, 1)
        assert paper.split(MESSAGE, 1)[1].strip()

        # Killed mid-line: systemd restarts it and the acknowledged keys are still there.
        sim.type_text("Good", cps=20)
        assert wait(lambda: sim.device.session.in_flight is None and
                    not len(sim.device.keys), 30, 0.2)
        time.sleep(2)  # the journal commit precedes the ACK; give the host its turn
        pid = unit(shell)["MainPID"]
        shell.run(f"kill -9 {pid}")
        assert wait(lambda: unit(shell)["NRestarts"] == "1" and
                    unit(shell)["SubState"] == "running", 600, 2), (unit(shell), service_log(shell))
        assert wait(lambda: "connected" in unit(shell)["StatusText"], 120, 2)
        before = len(sim.paper.text())
        sim.type_text(" night\n\n", cps=20)
        wait_reply(sim, "night", 600, busy=lambda: replying(shell))
        assert sim.paper.text()[before:].strip()
        _, transcript = shell.run("/opt/typewriter/venv/bin/typewriter transcript --state-dir "
                                  "/var/lib/typewriter --format text")
        assert "Good night" in transcript, transcript

        # The line unplugged: the service waits (no restart, no start-limit failure) ...
        guest.line.drop()
        assert wait(lambda: "not answering" in unit(shell)["StatusText"], 180, 2), unit(shell)
        time.sleep(30)
        state = unit(shell)
        FIGURES["status while unplugged"] = state["StatusText"]
        assert state["SubState"] == "running" and state["NRestarts"] == "1", state
        # ... and plugged back, it answers.
        guest.line.restore()
        assert wait(lambda: "connected" in unit(shell)["StatusText"], 180, 2), unit(shell)
        before = len(sim.paper.text())
        sim.type_text("Farewell\n\n", cps=20)
        wait_reply(sim, "Farewell", 600, busy=lambda: replying(shell))
        assert sim.paper.text()[before:].strip()

        # A switch under the real unit: the validator's child runs in the unit's hardening
        # (bwrap cannot, there), checks it on itself, and adds Landlock where it can.
        shell.run("cp -a /var/lib/typewriter/personas/juliet /var/lib/typewriter/personas/second"
                  " && chown -R typewriter:typewriter /var/lib/typewriter/personas/second")
        status, out = shell.run("/opt/typewriter/venv/bin/typewriter persona use second",
                                timeout=300)
        assert status == 0 and "second: active now" in out, (out, service_log(shell))
        _, journal = shell.run("journalctl -b -u typewriter --no-pager -g 'second: validated'")
        confined = re.search(r"second: validated, confined by (.*)", journal)
        assert confined and "unit's hardening" in confined.group(1), journal
        FIGURES["validation in the service"] = confined.group(1).strip()

        _, security = shell.run("systemd-analyze security typewriter --no-pager | tail -1")
        FIGURES["systemd-analyze security (in the guest)"] = security.strip()
        exposure = re.search(r"exposure level for typewriter.service: ([0-9.]+)", security)
        assert exposure and float(exposure.group(1)) <= 2.0, security
        _, out = shell.run("free -m | sed -n 2p; systemctl show -p MemoryCurrent -p "
                           "MemoryMax typewriter")
        FIGURES["memory"] = " ".join(out.split())
        # The unit already denies @resources (SystemCallFilter=~...): it held above. Try
        # MemoryDenyWriteExecute=yes on top, under this real systemd, and say what happened.
        if os.environ.get("TYPEWRITER_BOOT_TRY_MDWE"):
            old = unit(shell)["MainPID"]
            shell.run("mkdir -p /run/systemd/system/typewriter.service.d && printf "
                      "'[Service]\\nMemoryDenyWriteExecute=yes\\n' > "
                      "/run/systemd/system/typewriter.service.d/mdwe.conf && "
                      "systemctl daemon-reload && systemctl restart --no-block typewriter")
            held = wait(lambda: unit(shell)["MainPID"] not in (old, "0") and
                        "connected" in unit(shell)["StatusText"], 300, 2)
            answered = False
            if held:
                before = len(sim.paper.text())
                sim.type_text("Again\n\n", cps=20)
                try:
                    wait_reply(sim, "Again", 300, busy=lambda: replying(shell))
                    answered = bool(sim.paper.text()[before:].strip())
                except Exception:
                    pass
            _, log = shell.run("journalctl -b -u typewriter --no-pager | tail -5")
            FIGURES["MemoryDenyWriteExecute=yes"] = (
                "held: READY and a reply" if answered else f"failed: {unit(shell)} {log}")
    finally:
        if shell is not None:
            shell.close()
        guest.stop()
        sim.stop()
        console.close()
        print(json.dumps(FIGURES, indent=2))
        if os.environ.get("TYPEWRITER_BOOT_FIGURES"):
            Path(os.environ["TYPEWRITER_BOOT_FIGURES"]).write_text(json.dumps(FIGURES,
                                                                              indent=2))
        saved = os.environ.get("TYPEWRITER_BOOT_CONSOLE")
        if saved:
            shutil.copy(tmp_path / "console.log", saved)
