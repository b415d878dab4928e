"""What the board gives a model: MemAvailable against the cgroup's limit, CPU features."""

from pathlib import Path

from appliance.system import memory

MB = 1 << 20


def fake(tmp_path: Path, cgroup_line="0::/system.slice/typewriter.service", limits=None,
         meminfo=2048 * MB, cpuinfo=None):
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    cgroup.mkdir()
    (proc / "self/cgroup").write_text(cgroup_line + "\n")
    if meminfo is not None:
        (proc / "meminfo").write_text(f"MemTotal: 4000000 kB\nMemAvailable: {meminfo // 1024} "
                                      "kB\n")
    if cpuinfo is not None:
        (proc / "cpuinfo").write_text(cpuinfo)
    for folder, (limit, current) in (limits or {}).items():
        path = cgroup / folder
        path.mkdir(parents=True, exist_ok=True)
        (path / "memory.max").write_text(f"{limit}\n")
        (path / "memory.current").write_text(f"{current}\n")
    return proc, cgroup


def test_the_service_limit_caps_what_a_model_may_take(tmp_path):
    proc, cgroup = fake(tmp_path, limits={"system.slice/typewriter.service":
                                          (800 * MB, 300 * MB), "system.slice": ("max", 0)})
    assert memory.memory_limit(proc, cgroup) == 800 * MB
    assert memory.available_memory(proc, cgroup) == 500 * MB


def test_the_tightest_limit_up_the_tree_wins(tmp_path):
    proc, cgroup = fake(tmp_path, limits={"system.slice/typewriter.service": ("max", 100 * MB),
                                          "system.slice": (400 * MB, 350 * MB)})
    assert memory.memory_limit(proc, cgroup) == 400 * MB
    assert memory.available_memory(proc, cgroup) == 50 * MB


def test_without_a_limit_memavailable_decides(tmp_path):
    proc, cgroup = fake(tmp_path, limits={"system.slice/typewriter.service": ("max", 10)})
    assert memory.memory_limit(proc, cgroup) is None
    assert memory.available_memory(proc, cgroup) == 2048 * MB


def test_the_system_can_be_tighter_than_the_cgroup(tmp_path):
    proc, cgroup = fake(tmp_path, meminfo=200 * MB,
                        limits={"system.slice/typewriter.service": (800 * MB, 0)})
    assert memory.available_memory(proc, cgroup) == 200 * MB


def test_with_meminfo_hidden_the_cgroup_still_answers(tmp_path):
    proc, cgroup = fake(tmp_path, meminfo=None,
                        limits={"system.slice/typewriter.service": (800 * MB, 100 * MB)})
    assert memory.available_memory(proc, cgroup) == 700 * MB


def test_cpu_flags_from_cpuinfo_else_from_hwcaps(tmp_path):
    proc, _ = fake(tmp_path, cpuinfo="Features\t: fp asimd evtstrm crc32 asimddp\n")
    assert memory.repacks_weights(memory.cpu_flags(proc))
    hidden, _ = fake(tmp_path / "hidden")  # ProcSubset=pid: no /proc/cpuinfo
    pi5 = (1 << 1) | (1 << 20)  # asimd, asimddp (Cortex-A76)
    assert memory.cpu_flags(hidden, "aarch64", pi5) == {"asimd", "asimddp"}
    assert memory.repacks_weights(memory.cpu_flags(hidden, "aarch64", pi5))
    pi4 = 1 << 1  # Cortex-A72: no dot product
    assert not memory.repacks_weights(memory.cpu_flags(hidden, "aarch64", pi4))


def test_hwcaps_are_read_from_the_kernel():
    import platform

    caps = memory.hwcap()
    assert isinstance(caps, int)
    if platform.machine() == "aarch64":
        assert caps & 2  # asimd on every 64-bit ARM


def test_mmap_unless_the_weights_are_repacked():
    assert memory.use_mmap(700 * MB, flags={"asimd"}, limit=800 * MB)
    assert not memory.use_mmap(700 * MB, flags={"asimddp"}, limit=800 * MB)
    assert memory.use_mmap(900 * MB, flags={"avx2"}, limit=800 * MB), \
        "held once it would not fit: map it, the card can page it back"
