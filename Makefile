# One command builds the report, one runs the tests; both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp's name carries the hash of what the environment is built from,
# so `make setup` is a no-op until requirements.txt or pyproject.toml change.
REQ_HASH := $(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
PYTEST_ARGS ?=
REPORT_ARGS ?=
# A new .venv takes about 6.2 GB (torch with its CUDA libraries): say so before pip fills the disk halfway.
VENV_GB ?= 7

.PHONY: setup test test-fast report lab clean

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -c 'import os, shutil, sys; \
	free = shutil.disk_usage(os.path.dirname(os.path.abspath("$(VENV)"))).free / 2**30; \
	free < $(VENV_GB) and sys.exit(f"make setup: a new $(VENV) needs about $(VENV_GB) GB of disk and {free:.1f} GB are free there: free some, or put it on a bigger disk (make VENV=/path/.venv), and run it again")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "environment ready in $(VENV)"

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: everything but the end-to-end, real-data and heavy tests (see `make test-fast` at the top of the README).
test-fast: setup
	$(PY) -m pytest -m "not slow and not shared_data and not heavy" $(PYTEST_ARGS)

report: setup
	$(PY) -m retino_utils.report $(REPORT_ARGS)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf build
