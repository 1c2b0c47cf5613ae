# The two commands of the quick start: `make run` and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
BUILD_DEPS := "scikit-build-core>=0.10" "cython>=3.0" "numpy>=2.0" ninja cmake
SOURCES := $(shell find src ext -type f \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.toml' \)) \
           pyproject.toml CMakeLists.txt

.PHONY: run test test-fast bench install develop clean audit lock

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(BUILD_DEPS)
	touch $@

# A regular (non-editable) install: the tests import the installed package,
# so a packaging mistake fails CI. The persistent build dir keeps rebuilds
# incremental: only a changed .pyx is transpiled and compiled again.
$(VENV)/.installed: $(VENV)/.created $(SOURCES)
	$(PIP) install --no-build-isolation -Cbuild-dir=build/cmake ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/ingress run

# The whole suite, run from outside the source tree against the installed
# package, then the benchmarks in short mode with their regression floors.
test: install
	mkdir -p .benchmarks
	cd tests && ../$(PY) -m pytest -p no:cacheprovider -q --durations=25 .
	$(PY) -m pytest -p no:cacheprovider -q benchmarks --bench-short \
	    --benchmark-json=.benchmarks/short.json --benchmark-columns=median,ops,rounds --benchmark-sort=name

test-fast: install
	cd tests && ../$(PY) -m pytest -p no:cacheprovider -q -x -m "not integration" .

bench: install
	mkdir -p .benchmarks
	$(PY) -m pytest -p no:cacheprovider benchmarks --benchmark-json=.benchmarks/full.json

# For working on the code: an editable install in its own venv whose compiled
# modules are rebuilt on import whenever a .pyx/.pxd changed (scikit-build-core's
# editable.rebuild). The test suite keeps using the regular install in .venv.
DEVVENV := .venv-dev
develop:
	test -d $(DEVVENV) || $(PYTHON) -m venv $(DEVVENV)
	$(DEVVENV)/bin/python -m pip --disable-pip-version-check -q install $(BUILD_DEPS)
	$(DEVVENV)/bin/python -m pip --disable-pip-version-check -q install --no-build-isolation \
	    -Ceditable.rebuild=true -Ceditable.verbose=false -Cbuild-dir=build/editable -e ".[test]"

# Vulnerability scan of the locked runtime dependencies (requirements.lock, with
# hashes; `make lock` regenerates it from pyproject.toml). Not part of `make test`.
# pip-audit --strict fails when a package cannot be audited, so an unreachable
# advisory source is a failure that says so, never a silent pass.
AUDITVENV := .venv-audit
$(AUDITVENV)/.created:
	$(PYTHON) -m venv $(AUDITVENV)
	$(AUDITVENV)/bin/python -m pip --disable-pip-version-check -q install pip-audit pip-tools
	touch $@

audit: $(AUDITVENV)/.created
	@$(AUDITVENV)/bin/pip-audit --strict --require-hashes --disable-pip -r requirements.lock \
	    || { echo "make audit: FAILED: a vulnerability was found, or a dependency could not be audited (advisory source unreachable?); see above" >&2; exit 1; }

lock: $(AUDITVENV)/.created
	$(AUDITVENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url \
	    --no-emit-find-links --no-emit-trusted-host -o requirements.lock pyproject.toml

clean:
	rm -rf build $(VENV) $(DEVVENV) $(AUDITVENV) .benchmarks
