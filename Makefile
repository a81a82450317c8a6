# Every target installs what it needs on a fresh machine.
PY      := .venv/bin/python
STAMP   := .venv/.installed
DEMO    := demo-output

.PHONY: install test demo clean

$(STAMP): pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: it resolves to the local CPU wheel; an unpinned torch pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	rm -rf $(DEMO)
	.venv/bin/glioseg demo --out $(DEMO)

clean:
	rm -rf $(DEMO) .pytest_cache build src/*.egg-info
