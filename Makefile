# Every target installs what it needs on a fresh machine.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DEMO    := demo-output

.PHONY: install test test-all test-slow demo clean

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: it resolves to the local CPU wheel; an unpinned torch pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The default run skips every test marked slow (tests/conftest.py); test-all runs every test,
# test-slow only the slow ones.
test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

demo: $(STAMP)
	rm -rf $(DEMO)
	.venv/bin/glioseg demo --out $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache build src/*.egg-info
