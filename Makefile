# distillery: `make demo` runs the whole flow on an embedded Ray; `make test` runs the test suite.
# Both create .venv on first use. torch==2.13.0 is installed first: it is the CPU build on this
# kind of machine, and an unpinned torch would pull a multi-GB CUDA build.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-integration bench soak install clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m jobs.pipeline --config jobs/configs/demo.yaml $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# The long fault scenarios of RELIABILITY.md (about 13 minutes on 2 cores): labeling with a worker node
# removed and with the driver killed (multi-node Cluster), a training worker killed mid-epoch, then the
# serving soak (replica kills, overload, hot swaps, repeated). `make test` skips the pytest part.
soak: $(STAMP)
	HF_HUB_OFFLINE=1 DISTILLERY_SOAK=1 $(BIN)/python -m pytest -m soak -s tests/integration/test_faults_labeling.py tests/integration/test_faults_training.py $(PYTEST_ARGS)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/soak.py --out bench/soak.json

clean:
	rm -rf runs/ .pytest_cache
