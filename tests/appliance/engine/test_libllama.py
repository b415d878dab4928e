"""The engine's own hold on llama.cpp: its C API alone, without llama-cpp-python's high level."""

import subprocess
import sys

import pytest

from appliance.engine.worker import Engine, EngineError
from tests.conftest import SCRIPT_REPLY

RUN_AND_LIST = """
import sys
from appliance.engine.worker import Engine, Sampling
engine = Engine(sys.argv[1], n_ctx=256, n_threads=1).start()
reply = engine.generate("A conversation.\\n\\nROMEO: Who goes there?\\nJULIET:", ["\\n"],
                        Sampling(max_tokens=8, temperature=0.0))
print(repr(reply.text()))
print(sorted(m for m in ("numpy", "jinja2", "diskcache", "llama_cpp", "llama_cpp.llama")
             if m in sys.modules))
engine.close()
import llama_cpp  # the model tools, in the same process, still get the whole package
from appliance.engine import libllama
print(llama_cpp.llama_cpp is libllama.bindings(), hasattr(llama_cpp, "Llama"))
"""


def test_the_engine_runs_without_numpy_or_jinja2_and_the_package_still_imports(script_model):
    """24 MB of a Pi Zero's 512: what llama-cpp-python's package would load and the
    appliance never uses. Fresh interpreter: the test session has them all loaded."""
    out = subprocess.run([sys.executable, "-c", RUN_AND_LIST, str(script_model)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    reply, loaded, shared = out.stdout.splitlines()
    text = eval(reply)
    assert text and SCRIPT_REPLY.startswith(text)
    assert loaded == "[]"
    assert shared == "True True"


def test_a_model_llama_cpp_refuses_is_named_with_its_reason(tmp_path, script_model):
    import llama_cpp
    from llama_cpp import _logger

    Engine(script_model, n_ctx=256, n_threads=1).start().close()
    # The model tools' import of llama_cpp, after the engine's, installs its own log.
    llama_cpp.llama_log_set(_logger.llama_log_callback, None)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(script_model.read_bytes()[:4096])  # a GGUF header, then nothing
    with pytest.raises(EngineError) as refused:
        Engine(cut, n_ctx=256, n_threads=1).start()
    message = str(refused.value)
    assert str(cut) in message
    assert "failed to read" in message, "llama.cpp's first error line says why, not only that"
