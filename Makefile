# The README's two commands: `make demo` and `make test`. Both set up what is missing first:
# system libraries for headless OpenGL (apt, only those absent) and a .venv with torch pinned
# in the same pip command as the package (so nothing resolves a bare `torch` to a CUDA build).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cryoguard-installed
TORCH_PIN ?= torch==2.13.0
HEADLESS ?=
OUT ?= demo-output
XVFB := xvfb-run -a -s "-screen 0 1280x1024x24"
APT_PKGS := xvfb xauth libgl1 libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
	libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 fonts-dejavu-core

.PHONY: setup sysdeps venv demo test test-fast bench lint clean

setup: sysdeps venv

sysdeps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; \
	  else echo "need root for apt-get install$$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends --no-upgrade $$missing >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install $(TORCH_PIN) -e ".[testing]"
	# torchattacks (independent APGD/Square for cross-checks) declares torchvision, which would
	# pull a CUDA torch: installed without its dependencies, in the test environment only
	$(PY) -m pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

# napari with the demo tomogram and the widgets; with no display (or HEADLESS=1) the same
# pipeline runs headless under Xvfb and writes its outputs and a screenshot into $(OUT)/.
demo: setup
	@if [ -n "$(HEADLESS)" ] || [ -z "$$DISPLAY" ]; then \
	  $(XVFB) $(PY) -m napari_cryoguard.cli demo --headless --out $(OUT); \
	else \
	  $(PY) -m napari_cryoguard.cli demo --out $(OUT); \
	fi

# the whole suite (GUI tests under Xvfb, slow tests included)
test: setup
	$(XVFB) $(PY) -m pytest -ra

test-fast: setup
	$(XVFB) $(PY) -m pytest -ra -m "not slow"

bench: setup
	$(PY) benchmarks/bench_picking.py
	$(PY) benchmarks/bench_accuracy.py
	$(PY) benchmarks/bench_attacks.py

lint: setup
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist demo-output .pytest_cache
