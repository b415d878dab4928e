"""`typewriter image stand-in`: a Raspberry Pi OS-shaped arm64 Debian image to build and boot.

Raspberry Pi OS images come from raspberrypi.com, which a CI machine may not reach;
Debian's archive it can. The stand-in is an arm64 Debian (debootstrap's minbase plus
systemd, udev, Python and Debian's generic arm64 kernel) in the Pi's layout: an MBR
disk with a FAT boot partition (config.txt, cmdline.txt, and the kernel with a small
initramfs beside them) and an ext4 root carrying the markers `image build` checks
(/etc/rpi-issue, /etc/os-release, /usr/lib/aarch64-linux-gnu). `image build` turns
it into the appliance's image like a real one, and `image try` boots it in QEMU's
`virt` machine, whose PL011 UART is ttyAMA0 as on a Pi.

Made without chroot or emulation: debootstrap's first stage fetches and unpacks the
essential packages, every other fetched .deb is unpacked with dpkg-deb, and what
the maintainer scripts would have done that boot needs is done here (users and
groups from base-passwd, the dpkg status, depmod). Cached under the cache folder,
keyed by release and package list: the second time takes seconds.

The stand-in has one thing a real image does not: a root shell on its second
virtio console (hvc1), for `image try --shell` and the boot test; an image on a
Pi has no such console.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

from image.disk import SECTOR
from image.tools import ImageError, path_of, run

RELEASES = ("bookworm", "trixie")
PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "python3", "linux-image-arm64",
            "busybox-static", "procps")
VERSION = 3  # bump when the tree changes for the same packages
MiB = 1 << 20
BOOT_SIZE = 96 * MiB
BOOT_START = 4 * MiB
KERNEL, INITRD = "vmlinuz", "initrd.img"
MARKER = "typewriter-stand-in.txt"  # on the boot partition: `image try` boots it on `virt`
SHELL_UNIT = "typewriter-stand-in-shell.service"
# What the initramfs loads to find the root file system and the console (Debian builds
# these as modules) on QEMU's virt machine.
INITRD_MODULES = ("virtio_mmio", "virtio_blk", "virtio_console", "crc32c_generic", "ext4")
# Drivers a virtual machine never loads: left out of the root file system to keep it small.
PRUNE = ("drivers/gpu", "drivers/media", "drivers/net/wireless", "drivers/infiniband",
         "drivers/staging", "drivers/scsi", "drivers/net/ethernet", "sound", "drivers/iio",
         "drivers/hid", "drivers/input", "drivers/video", "drivers/usb", "drivers/bluetooth",
         "net/wireless", "net/mac80211", "drivers/md", "drivers/mtd", "fs/btrfs", "fs/xfs",
         "fs/ocfs2", "fs/nfs", "fs/ceph", "fs/smb", "fs/f2fs", "drivers/isdn", "drivers/thermal",
         "drivers/net/can", "drivers/crypto", "drivers/remoteproc", "drivers/phy", "drivers/mfd",
         "drivers/regulator", "drivers/clk", "drivers/pinctrl", "drivers/soc", "drivers/power",
         "drivers/rtc", "drivers/spi", "drivers/i2c", "drivers/mmc", "drivers/ata",
         "drivers/target", "drivers/nvme", "drivers/firmware", "drivers/leds", "drivers/pci",
         "drivers/watchdog", "drivers/edac", "drivers/perf", "drivers/iommu", "drivers/dma",
         "drivers/gpio", "drivers/hwmon", "drivers/platform", "drivers/tty/serial")

INIT = """\
#!/bin/busybox sh
# The stand-in's initramfs: load the virtual disk's and console's drivers, mount the
# root named on the kernel's command line, hand over to its systemd.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /modules); do insmod "/lib/modules/$module" 2>/dev/null; done
root=/dev/vda2
for word in $(cat /proc/cmdline); do
    case "$word" in root=/dev/*) root="${word#root=}" ;; esac
done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o rw "$root" /newroot || { echo "stand-in: cannot mount $root"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""

SHELL_TEXT = """\
# Only in the stand-in base (never in an image made from Raspberry Pi OS): a root
# shell on the second virtio console, for `typewriter image try --shell` and tests.
[Unit]
Description=Stand-in root shell on hvc1 (tests only)
BindsTo=dev-hvc1.device
After=dev-hvc1.device

[Service]
# One open of the console: raw, no echo (the settings last only while it is open); the
# shell reads a pipe, so it prints no prompts.
ExecStart=/bin/sh -c 'exec 3<>/dev/hvc1; stty raw -echo <&3; cat <&3 | /bin/sh >&3 2>&3'
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""

CONFIG_TXT = """\
# A stand-in for Raspberry Pi OS's config.txt (the Pi's firmware reads it; QEMU does not).
arm_64bit=1
dtparam=audio=on

[all]
"""
CMDLINE_TXT = ("console=serial0,115200 console=tty1 root=/dev/vda2 rootfstype=ext4 "
               "fsck.repair=yes rootwait\n")


def cache_key(release: str, packages=PACKAGES) -> str:
    text = "\n".join([str(VERSION), release, *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _mirror() -> str:
    return os.environ.get("TYPEWRITER_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _tool(*names: str) -> None:
    missing = [n for n in names if not shutil.which(n) and not os.path.exists(f"/usr/sbin/{n}")]
    if missing:
        raise ImageError(f"{', '.join(missing)} not found: apt-get install debootstrap "
                         "dosfstools mtools e2fsprogs fdisk kmod")


class Root:
    """Commands that must see root ownership: as root, or under one fakeroot session."""

    def __init__(self, state: Path):
        self.state = state
        self.prefix: List[str] = []
        if os.geteuid() != 0:
            if not shutil.which("fakeroot"):
                raise ImageError("the stand-in needs root or fakeroot: apt-get install fakeroot")
            state.touch()
            self.prefix = ["fakeroot", "-i", str(state), "-s", str(state)]

    def run(self, *args: str, what: str, timeout: float = 1800) -> str:
        done = subprocess.run([*self.prefix, path_of(args[0]), *args[1:]], capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ, LC_ALL="C"))
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ImageError(f"{what} failed: {' / '.join(tail)}")
        return done.stdout


def status_stanza(control: str) -> str:
    """A dpkg status entry for an unpacked package (its control file, installed)."""
    lines, out = control.rstrip("\n").splitlines(), []
    for line in lines:
        out.append(line)
        if line.startswith("Package:"):
            out.append("Status: install ok installed")
    return "\n".join(out) + "\n"


def unpack(root: Root, tree: Path, log: Callable[[str], None]) -> str:
    """Every .deb debootstrap fetched, unpacked into the tree; returns the dpkg status."""
    debs = []  # debootstrap's own list: package, then its .deb in the tree (or its cache)
    for line in (tree / "debootstrap/debpaths").read_text().splitlines():
        if not line.strip():
            continue
        where = line.split()[1]
        debs.append(tree / where.lstrip("/") if (tree / where.lstrip("/")).exists()
                    else Path(where))
    log(f"unpacking {len(debs)} packages")
    stanzas = []
    for deb in debs:
        # as debootstrap does: tar keeps merged /usr's /bin, /lib and /sbin links (dpkg-deb
        # -x would replace them with folders)
        root.run("sh", "-c", 'dpkg-deb --fsys-tarfile "$0" | tar -xf - -C "$1" '
                 "--keep-directory-symlink", str(deb), str(tree), what=f"unpacking {deb.name}")
        control = run(["dpkg-deb", "-f", str(deb)], what=f"reading {deb.name}")
        stanzas.append(status_stanza(control))
        names = run(["dpkg-deb", "-c", str(deb)], what=f"listing {deb.name}")
        package = control.split("Package:", 1)[1].split()[0]
        # dpkg's .list form: "/." for the root, then paths without a trailing slash
        files = ["/" + line.split(None, 5)[-1].split(" -> ")[0].removeprefix("./").rstrip("/")
                 for line in names.splitlines() if line.strip()]
        files = ["/." if f == "/" else f for f in files]
        (tree / "var/lib/dpkg/info").mkdir(parents=True, exist_ok=True)
        (tree / f"var/lib/dpkg/info/{package}.list").write_text("\n".join(files) + "\n")
    return "\n".join(stanzas)


def configure(tree: Path, release: str, status: str, kernel_version: str) -> None:
    """What the maintainer scripts would have done that a boot needs."""
    etc = tree / "etc"
    for mount in ("proc", "sys", "dev", "run", "tmp"):  # debootstrap in a container links
        place = tree / mount                          # /proc to the host's: a folder here
        if place.is_symlink():
            place.unlink()
        place.mkdir(mode=0o1777 if mount == "tmp" else 0o755, exist_ok=True)
    passwd = (tree / "usr/share/base-passwd/passwd.master").read_text()
    group = (tree / "usr/share/base-passwd/group.master").read_text()
    (etc / "passwd").write_text(passwd)
    (etc / "group").write_text(group)
    (etc / "shadow").write_text("".join(f"{line.split(':')[0]}:*:19000:0:99999:7:::\n"
                                        for line in passwd.splitlines() if line))
    (etc / "gshadow").write_text("".join(f"{line.split(':')[0]}:*::\n"
                                         for line in group.splitlines() if line))
    os.chmod(etc / "shadow", 0o640)
    os.chmod(etc / "gshadow", 0o640)
    (etc / "hostname").write_text("typewriter\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 typewriter\n")
    (etc / "machine-id").write_text("")  # systemd makes one on first boot
    (etc / "fstab").write_text("/dev/vda2 / ext4 rw,noatime 0 1\n")
    (etc / "rpi-issue").write_text(
        f"Raspberry Pi reference: typewriter stand-in, Debian {release} arm64 for QEMU's "
        "virt machine (not Raspberry Pi OS)\n")
    dpkg = tree / "var/lib/dpkg"
    for folder in ("updates", "info", "triggers", "alternatives"):
        (dpkg / folder).mkdir(parents=True, exist_ok=True)
    (dpkg / "status").write_text(status)
    for name in ("available", "diversions", "statoverride"):
        (dpkg / name).touch()
    (dpkg / "arch").write_text("arm64\n")
    units = etc / "systemd/system"
    (units / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
    (units / SHELL_UNIT).write_text(SHELL_TEXT)
    link = units / "multi-user.target.wants" / SHELL_UNIT
    if not link.is_symlink():
        link.symlink_to(f"/etc/systemd/system/{SHELL_UNIT}")
    modules = tree / f"usr/lib/modules/{kernel_version}/kernel"
    for folder in PRUNE:
        shutil.rmtree(modules / folder, ignore_errors=True)
    run(["depmod", "-b", str(tree), kernel_version], what="depmod")
    shutil.rmtree(tree / "var/cache/apt/archives", ignore_errors=True)
    shutil.rmtree(tree / "debootstrap", ignore_errors=True)


def newc(entries: Dict[str, tuple]) -> bytes:
    """A cpio archive in the kernel's newc format: path -> (mode, data or link target)."""
    out, ino = bytearray(), 1
    for path, (mode, data) in [*entries.items(), ("TRAILER!!!", (0, b""))]:
        name = path.encode() + b"\0"
        header = "070701" + "".join(f"{v:08X}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0))
        out += header.encode() + name
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def initramfs(tree: Path, kernel_version: str) -> bytes:
    """busybox, the modules in INITRD_MODULES (with what they depend on) and /init."""
    base = tree / f"usr/lib/modules/{kernel_version}"
    deps = {}
    for line in (base / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[Path(module).name.split(".ko")[0].replace("-", "_")] = (module, needs.split())
    order: List[str] = []

    def add(path: str) -> None:
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        for needed in reversed(deps.get(name, (path, []))[1]):
            add(needed)
        if path not in order:
            order.append(path)

    for name in INITRD_MODULES:
        if name in deps:
            add(deps[name][0])
    entries: Dict[str, tuple] = {}
    for folder in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
        entries[folder] = (0o040755, b"")
    entries["bin/busybox"] = (0o100755, (tree / "bin/busybox").read_bytes())
    for module in order:
        parts = Path(module).parts
        for i in range(1, len(parts)):
            entries.setdefault("lib/modules/" + "/".join(parts[:i]), (0o040755, b""))
        entries[f"lib/modules/{module}"] = (0o100644, (base / module).read_bytes())
    entries["modules"] = (0o100644, "\n".join(order).encode() + b"\n")
    entries["init"] = (0o100755, INIT.encode())
    return gzip.compress(newc(entries), 6)


def make_disk(root: Root, tree: Path, out: Path, boot_files: Dict[str, Path]) -> None:
    """MBR, FAT32 boot partition, ext4 root partition from the tree, as Raspberry Pi OS."""
    used = int(run(["du", "-sb", str(tree)], what="sizing the tree").split()[0])
    root_size = (int(used * 1.25) + 256 * MiB) // (4 * MiB) * (4 * MiB)
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        boot_fs, root_fs = Path(work) / "boot.fat", Path(work) / "root.ext4"
        with open(boot_fs, "wb") as f:
            f.truncate(BOOT_SIZE)
        run(["mkfs.vfat", "-F", "32", "-n", "bootfs", str(boot_fs)], what="mkfs.vfat")
        for name, source in boot_files.items():
            run(["mcopy", "-i", str(boot_fs), str(source), f"::/{name}"],
                what=f"writing {name} to the boot partition")
        root.run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", str(tree), str(root_fs),
                 f"{root_size // 1024}K", what="mkfs.ext4")
        with open(out, "wb") as image:
            image.truncate(BOOT_START + BOOT_SIZE + root_size)
        for offset, part in ((BOOT_START, boot_fs), (BOOT_START + BOOT_SIZE, root_fs)):
            subprocess.run(["dd", f"if={part}", f"of={out}", "bs=4M", "conv=sparse,notrunc",
                            f"seek={offset}", "oflag=seek_bytes", "status=none"], check=True)
        run(["sfdisk", "--no-reread", "--no-tell-kernel", str(out)], input=(
            "label: dos\nlabel-id: 0x7e577e57\n"
            f"start={BOOT_START // SECTOR}, size={BOOT_SIZE // SECTOR}, type=c\n"
            f"start={(BOOT_START + BOOT_SIZE) // SECTOR}, size={root_size // SECTOR}, "
            "type=83\n"), what="writing the partition table")


def build(release: str, out: Path, cache: Path, log: Callable[[str], None] = print,
          refresh: bool = False) -> Dict[str, float]:
    """Write the stand-in image to `out` (from the cache when it is there); returns timings."""
    if release not in RELEASES:
        raise ImageError(f"--release {release}: choose one of {', '.join(RELEASES)}")
    _tool("debootstrap", "dpkg-deb", "mkfs.vfat", "mcopy", "mkfs.ext4", "sfdisk", "depmod")
    timings: Dict[str, float] = {}
    cached = cache / f"stand-in-{release}-arm64-{cache_key(release)}.img"
    if refresh or not cached.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".stand-in-") as work:
            work = Path(work)
            tree = work / "root"
            root = Root(work / "fakeroot.state")
            started = time.monotonic()
            log(f"debootstrap: Debian {release} arm64 from {_mirror()} (first stage, fetch "
                "and unpack; a few minutes)")
            debs = cache / f"debootstrap-{release}-arm64"  # fetched once, checked each time
            debs.mkdir(exist_ok=True)
            root.run("debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                     f"--cache-dir={debs}",
                     f"--include={','.join(PACKAGES)}", release, str(tree), _mirror(),
                     what="debootstrap", timeout=3600)
            timings["debootstrap"] = time.monotonic() - started
            started = time.monotonic()
            status = unpack(root, tree, log)
            kernels = sorted((tree / "boot").glob("vmlinuz-*"))
            if not kernels:
                raise ImageError("debootstrap fetched no kernel (linux-image-arm64)")
            kernel = kernels[-1]
            version = kernel.name.removeprefix("vmlinuz-")
            configure(tree, release, status, version)
            (work / INITRD).write_bytes(initramfs(tree, version))
            boot = {"config.txt": work / "config.txt", "cmdline.txt": work / "cmdline.txt",
                    "issue.txt": work / "issue.txt", MARKER: work / MARKER,
                    KERNEL: kernel, INITRD: work / INITRD}
            (work / "config.txt").write_text(CONFIG_TXT)
            (work / "cmdline.txt").write_text(CMDLINE_TXT)
            (work / "issue.txt").write_text(f"typewriter stand-in, Debian {release} arm64\n")
            (work / MARKER).write_text(
                f"Debian {release} arm64 with kernel {version}: not Raspberry Pi OS. `typewriter "
                "image try` boots it on QEMU's virt machine with the kernel and initrd here.\n")
            partial = work / "stand-in.img"
            log("making the disk image (FAT boot, ext4 root)")
            make_disk(root, tree, partial, boot)
            os.replace(partial, cached)
            timings["tree and disk"] = time.monotonic() - started
    started = time.monotonic()
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        subprocess.run(["cp", "--sparse=always", str(cached), str(partial)], check=True)
        os.replace(partial, out)
    except (OSError, subprocess.CalledProcessError) as e:
        partial.unlink(missing_ok=True)
        raise ImageError(f"cannot write {out}: {e}") from None
    timings["copy"] = time.monotonic() - started
    return timings


def is_stand_in(names: List[str]) -> bool:
    return MARKER.lower() in {n.lower() for n in names}


def default_cache() -> Path:
    from appliance.system.paths import cache_dir

    return cache_dir() / "image"

