"""The persona bench on a real adapter persona: every figure, and the relations they keep."""

import json
import math
from pathlib import Path

import pytest

from appliance.bench.persona import persona_bench
from tests.conftest import adapter_bundle

DIALOGUE = Path(__file__).resolve().parents[4] / "shared" / "data" / "tinyshakespeare.txt"


@pytest.mark.slow
@pytest.mark.skipif(not DIALOGUE.is_file(), reason="../shared/data/tinyshakespeare.txt absent")
def test_persona_bench_compares_adapter_base_swap_reload_and_quants(tmp_path, tiny_adapters):
    base, (adapter, _) = tiny_adapters
    folder = adapter_bundle(tmp_path / "juliet", base, adapter, "Juliet")
    out = tmp_path / "persona.json"
    result = persona_bench(folder, threads=2, rounds=1, dialogue=DIALOGUE, character="JULIET",
                           work=tmp_path / "work", out=out)
    assert json.loads(out.read_text()) == result
    assert set(result["decode_tps"]) == {"base", "adapter", "q4_0_adapter"}
    assert all(v > 0 for v in result["decode_tps"].values())
    assert result["adapter_swap_ms"] < result["full_reload_ms"], "a swap loads no model"
    assert all(math.isfinite(v) and v > 0 for v in result["held_out_nll"].values())
    assert result["chars_per_s"] > 0 and result["vs_typewriter"] > 0
