"""The end-to-end bench runs the real appliance process against the simulated typewriter."""

import json

import pytest

from appliance.bench.end_to_end import end_to_end
from appliance.engine.synth import synthesize
from tests.conftest import adapter_bundle

# The tiny vocabulary cannot spell the bench's own script (see script_chain).
SCRIPT = "Fair friend, the night is young and sweet.\nROMEO:"


@pytest.mark.slow
def test_end_to_end_bench_reports_every_measure(tmp_path):
    model = synthesize("tiny", tmp_path / "bench.gguf", script=SCRIPT)
    out = tmp_path / "bench.json"
    result = end_to_end(model, "tiny", threads=1, rate=200, cps=2000, exchanges=1, out=out)
    assert json.loads(out.read_text()) == result
    for key in ("ttft_prefill_s", "ttft_submit_s", "ttft_prefill_p95_s", "decode_tps_appliance",
                "decode_tps_bare", "rss_beyond_model_mb", "printer_idle_s", "shape", "threads",
                "speech_start_s"):
        assert key in result
    # Without prefill the whole message is evaluated at submit; with it, at most the
    # held-back tokens and the label.
    assert result["tokens_at_submit_no_prefill"][0] >= result["message_tokens"][0]
    assert result["tokens_at_submit_prefill"][0] < result["message_tokens"][0]
    assert result["cached_before_return"] == result["reply_prompt_tokens"]
    assert 0 < result["ttft_prefill_s"] and 0 < result["ttft_submit_s"]
    # The bare loop decoded just before each reply and after it, at its prompt length.
    assert (len(result["decode_tps_bare_before"]) == len(result["decode_tps_bare_after"])
            == len(result["decode_tps_appliance_pairs"]) == 1)
    assert result["decode_ratio"] > 0 and result["decode_ratio_speaking"] > 0
    assert result["decode_idle_penalty"] > 0
    assert 30 < result["rss_peak_mb"] < 1000  # the appliance process's own high-water mark


@pytest.mark.slow
def test_end_to_end_bench_runs_an_adapter_persona_against_a_bare_loop_with_its_adapter(
        tmp_path, tiny_adapters):
    base, (adapter, _) = tiny_adapters
    folder = adapter_bundle(tmp_path / "juliet", base, adapter, "Juliet")
    result = end_to_end(base, "Juliet", threads=1, rate=200, cps=2000, exchanges=2,
                        persona=folder)
    assert result["adapter"] == "adapter.gguf" and result["shape"] == "Juliet"
    files_mb = (base.stat().st_size + adapter.stat().st_size) / 2**20
    assert result["model_file_mb"] == round(files_mb, 1)
    assert abs(result["rss_beyond_model_mb"] - (result["rss_peak_mb"] - files_mb)) <= 0.1
    pairs = len(result["decode_tps_appliance_pairs"])
    assert 1 <= pairs == len(result["decode_tps_bare_before"]) == \
        len(result["decode_tps_bare_after"])
    assert result["decode_ratio"] > 0
    assert result["tokens_at_submit_prefill"][0] < result["message_tokens"][0]
