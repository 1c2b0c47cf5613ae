# The two commands of the quick start: `make run` and `make test`.
# Both create .venv when it is missing and install what they need into it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
BUILD_DEPS := "scikit-build-core>=0.10" "cython>=3.0" "numpy>=2.0" ninja cmake
SOURCES := $(shell find src ext -type f \( -name '*.py' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.toml' \)) \
           pyproject.toml CMakeLists.txt

.PHONY: run test test-fast bench install develop clean

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
	cd tests && ../$(PY) -m pytest -p no:cacheprovider -q .
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

clean:
	rm -rf build $(VENV) $(DEVVENV) .benchmarks
