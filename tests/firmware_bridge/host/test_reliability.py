"""No keystroke lost or doubled between the firmware and a host that keeps keys in the
Journal before it acknowledges them: the host killed with SIGKILL and restarted, a
lossy line, and the port unplugged and plugged back in, each while 2,000 keys are typed.

The firmware is the real one in the simulated typewriter (only its board simulated),
on a real pty; the host is the real Link. Each test prints its counts.
"""

import difflib
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

from appliance.system.journal import Journal
from firmware_bridge.host.link import Link
from firmware_bridge.host.simulator import SimulatedTypewriter
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[3]
KEYS = 2000
DEBOUNCE = (0.004, 0.002)  # a fast typist: about 150 keys a second

HOST = """
import sys, time
from pathlib import Path
from appliance.system.journal import Journal
from firmware_bridge.host.link import Link

journal = Journal(Path(sys.argv[2]))
link = Link(sys.argv[1], on_keys=lambda boot_id, seq, codes: bool(
    journal.accept_keys(boot_id, seq, codes)))
state = journal.link_state()
if state is not None:
    link.restore(*state)
link.open()
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def script(seed: int) -> bytes:
    """2,000 keys as a person types them: printable ASCII and returns."""
    rng = random.Random(seed)
    return bytes(rng.choice(b"\n" + bytes(range(0x20, 0x7F))) for _ in range(KEYS))


def journal_keys(state: Path) -> bytes:
    db = sqlite3.connect(state / "transcript.sqlite3")
    try:
        return b"".join(bytes(row[0]) for row in db.execute("SELECT codes FROM keys ORDER BY id"))
    finally:
        db.close()


def counts(typed: bytes, delivered: bytes) -> dict:
    """Typed, delivered, lost and doubled keys (from the edit between the two)."""
    lost = doubled = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, typed, delivered,
                                                     autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            lost += i2 - i1
        if op in ("insert", "replace"):
            doubled += j2 - j1
    return {"typed": len(typed), "delivered": len(delivered), "lost": lost,
            "doubled": doubled}


def settled(sim: SimulatedTypewriter) -> bool:
    """Everything typed has left the firmware and been acknowledged."""
    fw = sim.firmware
    return not (sim.hal.keyboard.typing or len(fw.held) or len(sim.device.keys)
                or sim.device.session.pending)


def report(name: str, figures: dict) -> None:
    print(f"\nreliability {name}: {figures}")


class Line:
    """A serial line between the typewriter's pty and a port the host opens at `path`,
    through a pump that can damage bytes, and can be unplugged and plugged back in
    (the port's device node disappears and comes back, as a USB adapter's does)."""

    def __init__(self, device_path: str, path: Path, damage: float = 0.0, seed: int = 1):
        self.device = os.open(device_path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.device)
        self.path = path
        self.damage = damage
        self.rng = random.Random(seed)
        self.damaged = 0
        self.carried = 0
        self.master = -1
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.plug()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        name = os.ttyname(slave)
        os.close(slave)  # the host opens it by name
        os.set_blocking(master, False)
        with self._lock:
            self.master = master
        os.symlink(name, self.path)

    def unplug(self) -> None:
        os.unlink(self.path)
        with self._lock:
            os.close(self.master)
            self.master = -1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.master >= 0:
            self.unplug()
        os.close(self.device)

    def _mangle(self, data: bytes) -> bytes:
        if not self.damage:
            return data
        self.carried += len(data)
        out = bytearray()
        for byte in data:
            r = self.rng.random()
            if r < self.damage:  # a bit flipped
                byte ^= 1 << self.rng.randrange(8)
            elif r < 2 * self.damage:  # dropped
                self.damaged += 1
                continue
            elif r < 3 * self.damage:  # doubled
                out.append(byte)
            else:
                out.append(byte)
                continue
            self.damaged += 1
            out.append(byte)
        return bytes(out)

    def _pump(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                master = self.master
            fds = [self.device] + ([master] if master >= 0 else [])
            readable, _, _ = select.select(fds, [], [], 0.02)
            with self._lock:
                if self.master != master:
                    continue  # unplugged meanwhile
                if self.device in readable:
                    data = os.read(self.device, 4096)
                    if master >= 0:  # unplugged: what the typewriter says goes nowhere
                        self._write(master, self._mangle(data))
                if master in readable:
                    try:
                        data = os.read(master, 4096)
                    except OSError:  # the host has not opened this one yet
                        continue
                    self._write(self.device, self._mangle(data))

    @staticmethod
    def _write(fd: int, data: bytes) -> None:
        try:
            os.write(fd, data)
        except OSError:
            pass


def start_host(port: str, state: Path) -> subprocess.Popen:
    host = subprocess.Popen([sys.executable, "-c", HOST, port, str(state)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert host.stdout.readline() == "ready\n"
    return host


def test_host_killed_and_restarted_while_typing_loses_and_doubles_nothing(tmp_path):
    """Needs Journal.accept_keys to commit a batch and the link state in one transaction:
    killed between the two, a restarted host takes the batch's retransmission for new."""
    typed = script(1)
    state = tmp_path / "state"
    kills = 0
    with SimulatedTypewriter(cps=2000, cr_seconds=0, debounce=DEBOUNCE) as sim:
        port = sim.start()
        host = start_host(port, state)
        try:
            sim.type_text(typed.decode())
            rng = random.Random(2)
            while sim.hal.keyboard.typing:
                time.sleep(rng.uniform(0.3, 1.2))
                host.send_signal(signal.SIGKILL)
                host.wait()
                kills += 1
                host = start_host(port, state)
            assert wait_for(lambda: settled(sim), 20)
        finally:
            host.send_signal(signal.SIGKILL)
            host.wait()
        overflowed = sim.device.overflowed
    figures = counts(typed, journal_keys(state))
    report("SIGKILL", dict(figures, kills=kills))
    assert kills >= 3 and not overflowed
    assert figures == {"typed": KEYS, "delivered": KEYS, "lost": 0, "doubled": 0}


def run_link(tmp_path, line_damage: float, unplug: bool):
    """Type the script through a Line to an in-process Link and Journal; the figures."""
    typed = script(3)
    journal = Journal(tmp_path / "state")
    ups = []
    with SimulatedTypewriter(cps=2000, cr_seconds=0, debounce=DEBOUNCE) as sim:
        line = Line(sim.start(), tmp_path / "ttyTW", damage=line_damage)
        link = Link(str(line.path), on_keys=lambda b, s, codes: bool(
            journal.accept_keys(b, s, codes)),
            on_change=lambda what: what == "up" and ups.append(time.monotonic()))
        reconnects = []
        try:
            link.open()
            assert wait_for(lambda: link.up, 5)
            sim.type_text(typed.decode())
            while unplug and sim.hal.keyboard.typing and len(reconnects) < 3:
                time.sleep(1.0)
                line.unplug()
                assert wait_for(lambda: not link.up, 5), "the host noticed the unplug"
                time.sleep(1.0)
                ups.clear()
                line.plug()
                plugged = time.monotonic()
                assert wait_for(lambda: ups, 5), "reconnected within 5 s"
                reconnects.append(round(ups[-1] - plugged, 2))
            assert wait_for(lambda: settled(sim), 30)
        finally:
            link.close()
            line.close()
        overflowed = sim.device.overflowed
    delivered = b"".join(codes for _, _, codes in journal.unconsumed_keys())
    journal.close()
    return counts(typed, delivered), (line.damaged, line.carried), reconnects, overflowed


def test_a_lossy_line_loses_and_doubles_nothing(tmp_path):
    figures, (damaged, carried), _, overflowed = run_link(tmp_path, 1e-3, unplug=False)
    report("lossy line", dict(figures, bytes_damaged=damaged, bytes_carried=carried))
    assert damaged > 0 and not overflowed
    assert figures == {"typed": KEYS, "delivered": KEYS, "lost": 0, "doubled": 0}


def test_unplugged_and_replugged_the_host_reconnects_and_nothing_is_lost(tmp_path):
    figures, _, reconnects, overflowed = run_link(tmp_path, 0.0, unplug=True)
    report("unplug/replug", dict(figures, reconnect_seconds=reconnects))
    assert len(reconnects) >= 2 and all(r < 5 for r in reconnects) and not overflowed
    assert figures == {"typed": KEYS, "delivered": KEYS, "lost": 0, "doubled": 0}


@pytest.mark.parametrize("typed,delivered,expected", [
    (b"abcd", b"abcd", (0, 0)), (b"abcd", b"abd", (1, 0)), (b"abcd", b"abbcd", (0, 1))])
def test_counts_find_lost_and_doubled_keys(typed, delivered, expected):
    figures = counts(typed, delivered)
    assert (figures["lost"], figures["doubled"]) == expected
