"""The stand-in's and `image try`'s small parts (the boot itself: test_boot.py, slow)."""

from __future__ import annotations

import gzip

from image import qemu, standin


def test_the_kernel_command_line_for_each_machine():
    built = "console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
    virt = qemu.kernel_command_line(built, "virt").split()
    assert "console=hvc0" in virt and "root=/dev/vda2" in virt
    assert not any(w.startswith("root=PARTUUID") or w == "console=tty1" for w in virt)
    assert "console=ttyAMA0" not in virt, "ttyAMA0 is the typewriter's, as on a Pi"
    raspi = qemu.kernel_command_line(built, "raspi3b").split()
    assert "root=PARTUUID=4e639091-02" in raspi and "console=ttyS1,115200" in raspi


def test_an_unpacked_package_is_installed_in_the_status():
    control = "Package: libfoo\nVersion: 1.0\nArchitecture: arm64\nDescription: x\n more\n"
    stanza = standin.status_stanza(control)
    assert stanza.splitlines()[:2] == ["Package: libfoo", "Status: install ok installed"]
    assert stanza.endswith(" more\n")


def test_the_initramfs_is_a_newc_archive():
    data = standin.newc({"bin": (0o040755, b""), "init": (0o100755, b"#!/bin/sh\n")})
    assert data.startswith(b"070701") and b"TRAILER!!!" in data
    assert len(data) % 4 == 0
    # the second entry's header: mode 100755, 10 bytes, its name "init"
    entry = data[data.index(b"070701", 6):]
    assert int(entry[14:22], 16) == 0o100755 and int(entry[54:62], 16) == 10
    assert entry[110:115] == b"init\0"
    assert gzip.decompress(gzip.compress(data)) == data


def test_the_cache_is_keyed_by_release_and_packages():
    assert standin.cache_key("bookworm") == standin.cache_key("bookworm")
    assert standin.cache_key("bookworm") != standin.cache_key("trixie")
    assert standin.cache_key("bookworm") != standin.cache_key("bookworm", ("systemd",))


def test_a_stand_in_is_told_apart_by_its_boot_partition():
    assert standin.is_stand_in(["config.txt", "cmdline.txt", standin.MARKER.upper()])
    assert not standin.is_stand_in(["config.txt", "cmdline.txt", "kernel8.img"])
