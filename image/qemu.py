"""`typewriter image try`: boot a built image in QEMU with a simulated typewriter on its UART.

Two machines (TCG, no KVM needed):

- the stand-in (`image stand-in`): QEMU's `virt` machine, `-cpu cortex-a72 -m 1024
  -smp 2`, the generic arm64 kernel and initramfs from its boot partition. Its
  PL011 UART is ttyAMA0, as on a Pi, so the image's own udev rule names it
  /dev/typewriter; the kernel's console is the first virtio console (hvc0).
- Raspberry Pi OS: QEMU's `raspi3b` with the image's own kernel8.img and
  bcm2710-rpi-3-b.dtb. The PL011 (ttyAMA0) is the typewriter's line, the mini
  UART (ttyS1) the console. (QEMU 7.2 has no Pi 4 or 5.)

The typewriter's line is a unix socket chardev; a relay here joins it to the
simulated typewriter's pty (firmware_bridge.host.simulator), or, with --pty, to a
pty of its own whose path is printed. The relay can drop and restore the line,
as unplugging the typewriter would.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Callable, List, Optional, TextIO

from image.bootfs import BootFS
from image.disk import pi_layout
from image.standin import INITRD, KERNEL, is_stand_in
from image.tools import ImageError, run

QEMU = "qemu-system-aarch64"
RASPI_KERNEL, RASPI_DTB = "kernel8.img", "bcm2710-rpi-3-b.dtb"
_DROPPED = re.compile(r"^(console|root|init|rootfstype)=")


def kernel_command_line(cmdline: str, machine: str) -> str:
    """cmdline.txt as `image build` left it, for the emulated machine."""
    words = [w for w in cmdline.split() if not _DROPPED.match(w)]
    if machine == "virt":
        return " ".join([*words, "console=hvc0", "root=/dev/vda2", "rootfstype=ext4", "rw"])
    root = [w for w in cmdline.split() if w.startswith(("root=", "rootfstype=", "init="))]
    return " ".join([*words, *root, "console=ttyS1,115200"])


class Line:
    """The serial line between QEMU's UART (a unix socket) and a pty here."""

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.peer = -1  # the pty's fd on our side
        self.connected = threading.Event()
        self._sock: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.sent = self.received = self.dropped = 0

    def attach(self, fd: int) -> None:
        """Relay between QEMU's UART and `fd` (a pty end)."""
        self.peer = fd
        os.set_blocking(fd, False)
        self._thread = threading.Thread(target=self._run, name="serial-line", daemon=True)
        self._thread.start()

    def drop(self) -> None:
        """Unplug: the Pi's UART hears nothing and its bytes go nowhere."""
        self.connected.clear()

    def restore(self) -> None:
        self.connected.set()

    def _connect(self) -> Optional[socket.socket]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.socket_path))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        return sock

    def _run(self) -> None:
        self.connected.set()
        while not self._stop.is_set():
            if self._sock is None:
                self._sock = self._connect()
                if self._sock is None:
                    time.sleep(0.2)
                    continue
            readable, _, _ = select.select([self._sock, self.peer], [], [], 0.1)
            if self._sock in readable:
                data = self._recv()
                if data is None:  # QEMU closed it: connect again (or stop with QEMU)
                    self._reconnect()
                    continue
                if data and self.connected.is_set():
                    self.received += len(data)
                    _write_all(self.peer, data)
            if self.peer in readable:
                try:
                    data = os.read(self.peer, 4096)
                except OSError:
                    data = b""
                if data and self.connected.is_set():
                    self._send(data)

    def _send(self, data: bytes) -> None:
        """To the Pi's UART; what it cannot take now (nobody has the port open, so QEMU
        stops reading) is dropped, as a real line drops bytes nobody receives."""
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._reconnect()
            return
        self.sent += sent
        self.dropped += len(data) - sent

    def _reconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def _recv(self) -> Optional[bytes]:
        try:
            data = self._sock.recv(4096)
        except BlockingIOError:
            return b""
        except OSError:
            return None
        return data if data else None  # QEMU went away

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        except OSError:
            return
        data = data[n:]


class Guest:
    """One emulated boot of an image."""

    def __init__(self, image: Path, machine: str = "auto", keep: bool = False,
                 console: Optional[TextIO] = None, shell: Optional[Path] = None):
        if not shutil.which(QEMU):
            raise ImageError(f"{QEMU} not found: apt-get install qemu-system-arm")
        if not image.is_file():
            raise ImageError(f"{image}: no such image: build one with `typewriter image build`")
        self.image = image
        self.work = Path(tempfile.mkdtemp(prefix="typewriter-try-"))
        boot_part, _ = pi_layout(image)
        boot = BootFS(image, boot_part)
        names = boot.names()
        if machine == "auto":
            machine = "virt" if is_stand_in(names) else "raspi3b"
        self.machine = machine
        self.line_socket = self.work / "uart.sock"
        self.shell_socket = shell
        self.console = console or sys.stdout
        self.console_text: List[str] = []
        self._console_lock = threading.Lock()
        cmdline = kernel_command_line(boot.read("cmdline.txt"), machine)
        self.command = self._command(boot, names, cmdline, keep)
        self.process: Optional[subprocess.Popen] = None
        self.started = 0.0
        self.line = Line(self.line_socket)

    def _extract(self, boot: BootFS, names: List[str], name: str) -> Path:
        if name.lower() not in {n.lower() for n in names}:
            raise ImageError(f"{self.image}: the boot partition has no {name}: for QEMU's "
                             f"{self.machine} machine it needs one (is this a built image?)")
        target = self.work / name
        run(["mcopy", "-n", "-i", boot.drive, f"::/{name}", str(target)],
            what=f"reading {name} from the boot partition")
        return target

    def _command(self, boot: BootFS, names: List[str], cmdline: str, keep: bool) -> List[str]:
        line = ["-chardev", f"socket,id=tw,path={self.line_socket},server=on,wait=off"]
        common = ["-display", "none", "-monitor", "none", "-net", "none", "-no-reboot"]
        if self.machine == "virt":
            kernel = self._extract(boot, names, KERNEL)
            initrd = self._extract(boot, names, INITRD)
            drive = f"if=none,id=hd,file={self.image},format=raw" + ("" if keep else
                                                                     ",snapshot=on")
            command = [QEMU, "-M", "virt", "-cpu", "cortex-a72", "-m", "1024", "-smp", "2",
                       *common, "-kernel", str(kernel), "-initrd", str(initrd),
                       "-append", cmdline, "-drive", drive,
                       "-device", "virtio-blk-device,drive=hd",
                       "-device", "virtio-rng-device",
                       *line, "-serial", "chardev:tw",
                       "-device", "virtio-serial-device",
                       "-chardev", "stdio,id=con,signal=off",
                       "-device", "virtconsole,chardev=con,name=console"]
            if self.shell_socket:
                command += ["-chardev", f"socket,id=shell,path={self.shell_socket},"
                            "server=on,wait=off", "-device", "virtconsole,chardev=shell,name=shell"]
            return command
        kernel = self._extract(boot, names, RASPI_KERNEL)
        dtb = self._extract(boot, names, RASPI_DTB)
        disk = self.image
        size = disk.stat().st_size
        if keep and size & (size - 1):
            raise ImageError(f"{self.image}: QEMU's raspi3b wants an SD card whose size is a "
                             "power of two: leave --keep out (a grown copy is booted)")
        if not keep or size & (size - 1):
            disk = self.work / "sd.img"
            subprocess.run(["cp", "--sparse=always", str(self.image), str(disk)], check=True)
            with open(disk, "r+b") as f:
                f.truncate(1 << (size - 1).bit_length())
        return [QEMU, "-M", "raspi3b", *common, "-kernel", str(kernel), "-dtb", str(dtb),
                "-append", cmdline, "-drive", f"if=sd,file={disk},format=raw",
                *line, "-serial", "chardev:tw", "-chardev", "stdio,id=con,signal=off",
                "-serial", "chardev:con"]

    def start(self, fd: int) -> Guest:
        """Boot, with the typewriter's line relayed to `fd`."""
        self.started = time.monotonic()
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._copy_console, name="console", daemon=True).start()
        self.line.attach(fd)
        return self

    def _copy_console(self) -> None:
        assert self.process and self.process.stdout
        pending = b""
        for chunk in iter(lambda: self.process.stdout.read1(4096), b""):
            text = chunk.decode("utf-8", "replace")
            self.console.write(text)
            self.console.flush()
            pending += chunk
            *lines, rest = pending.split(b"\n")
            pending = rest
            with self._console_lock:
                self.console_text += [f"{time.monotonic() - self.started:8.1f} "
                                      f"{line.decode('utf-8', 'replace').rstrip()}"
                                      for line in lines]

    def seen(self, text: str) -> Optional[float]:
        """When (seconds after start) a console line containing `text` appeared, or None."""
        with self._console_lock:
            for line in self.console_text:
                if text in line:
                    return float(line[:8])
        return None

    def stop(self) -> None:
        self.line.close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.work, ignore_errors=True)


class Shell:
    """The stand-in's root shell on hvc1: run a command, get its output and status."""

    def __init__(self, path: Path, timeout: float = 600):
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.buffer = b""
        self.count = 0

    def run(self, command: str, timeout: float = 120) -> tuple:
        """(exit status, output) of `command` in the guest, or TimeoutError."""
        self.count += 1
        mark = f"__typewriter_done_{self.count}__"
        self.sock.sendall(f"( {command} ) 2>&1; echo {mark}$?\n".encode())
        deadline = time.monotonic() + timeout
        pattern = re.compile(re.escape(mark).encode() + rb"(\d+)")
        while True:
            found = pattern.search(self.buffer)
            if found:
                out = self.buffer[:found.start()].decode("utf-8", "replace")
                self.buffer = self.buffer[found.end():]
                return int(found.group(1)), out
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the guest to {command!r}")
            self.sock.settimeout(min(left, 5))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionError("the guest's shell went away")
            self.buffer += data

    def wait_ready(self, timeout: float = 900) -> None:
        """Until the shell answers (the guest has booted far enough to start it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _ = self.run("true", timeout=10)
                if status == 0:
                    return
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the guest's shell never answered")

    def close(self) -> None:
        self.sock.close()


def host_linked(sim) -> bool:
    """The simulated typewriter has heard the appliance greet it."""
    return sim.device.session.peer_boot_id is not None


def wait_until(condition: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def wait_reply(sim, typed: str, timeout: float, quiet: float = 5.0,
               busy: Optional[Callable[[], bool]] = None) -> str:
    """The paper once a reply follows what was typed and nothing has printed for `quiet` s.

    Under emulation a reply can pause for longer than `quiet` between pieces; `busy`, where
    given, asks the appliance itself whether its reply is still going (a key typed then
    would land in the reply's line).
    """
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        text = sim.paper.text()
        after = text.split(typed.strip(), 1)[-1] if typed.strip() in text else ""
        if text != last:
            last, since = text, time.monotonic()
        elif (after.strip() and time.monotonic() - since >= quiet and sim.wait_printed(0.1)
              and not (busy and busy())):
            if sim.paper.text() == text:
                return text
        time.sleep(0.2)
    raise ImageError(f"no reply on the paper within {timeout:.0f} s (--timeout); the paper: "
                     f"{sim.paper.text()!r}")


def try_image(args) -> int:
    """The `image try` command."""
    from firmware_bridge.host.simulator import SimulatedTypewriter

    log = open(args.log, "w", encoding="utf-8") if args.log else None
    guest = Guest(Path(args.image), args.machine, args.keep, console=log or sys.stdout,
                  shell=Path(args.shell) if args.shell else None)
    sim = None
    try:
        if args.pty:
            master, slave = os.openpty()
            tty.setraw(master)
            tty.setraw(slave)
            guest.start(master)
            print(f"the Pi's serial port (its ttyAMA0) is {os.ttyname(slave)} here; Ctrl-C "
                  "stops", file=sys.stderr)
            guest.process.wait()
            return 0
        sim = SimulatedTypewriter(cps=args.cps, cr_seconds=0.5 * 12 / max(args.cps, 12))
        path = sim.start()
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        guest.start(fd)
        print(f"booting {args.image} on QEMU's {guest.machine} machine"
              + (f" (console in {args.log})" if args.log else ""), file=sys.stderr)
        if args.type is None:
            from firmware_bridge.host.simulator import read_terminal_keys

            if not wait_until(lambda: host_linked(sim) or guest.process.poll() is not None,
                              args.timeout):
                raise ImageError("the appliance did not greet the typewriter in time")
            print("The appliance answers: type, Return twice sends; Ctrl-C quits.",
                  file=sys.stderr)
            sim.on_strike = lambda ch: (sys.stderr.write(ch), sys.stderr.flush())
            read_terminal_keys(sim.press)
            return 0
        started = time.monotonic()
        if not wait_until(lambda: host_linked(sim) or guest.process.poll() is not None,
                          args.timeout):
            raise ImageError(f"the appliance did not greet the typewriter within "
                             f"{args.timeout:.0f} s (--timeout)")
        if guest.process.poll() is not None:
            raise ImageError(f"QEMU stopped (exit {guest.process.returncode}) before the "
                             "appliance answered")
        linked = time.monotonic() - started
        sim.type_text(args.type + "\n\n")
        paper = wait_reply(sim, args.type, args.timeout - linked)
        print(paper)
        print(f"typewriter answered {linked:.0f} s after boot began, replied "
              f"{time.monotonic() - started - linked:.0f} s after the message", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        guest.stop()
        if sim is not None:
            sim.stop()
        if log:
            log.close()
