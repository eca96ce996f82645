# The two commands of the README: `make run` and `make test`. Both set up .venv first.
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/tiny.yaml

# No machine reaches a model hub or telemetry host: fail fast instead of retrying.
export HF_HUB_OFFLINE := 1
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 60
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions

.PHONY: setup run test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: setup
	mkdir -p $(PREFECT_HOME)
	$(BIN)/spark-vl run $(CONFIG)

test: setup
	mkdir -p $(PREFECT_HOME)
	$(BIN)/python -m pytest -q
