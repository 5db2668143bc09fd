# Two commands for a new machine: `make run` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.segnode-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PEERS  := dcmtk dicom3tools orthanc orthanc-dicomweb orthanc-gdcm chromium postgresql openssl libnss3-tools

.PHONY: run test install peers ohif lint unit bench clean

$(STAMP): pyproject.toml
	python3.11 -m venv $(VENV) 2>/dev/null || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing resolves to a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install
	# ct-liver's weights: converted once from the pyliverlesionseg wheel on PyPI (idempotent, no model hub)
	$(VENV)/bin/segnode models install ct-liver
	$(VENV)/bin/segnode serve

peers:
	@if ! command -v storescu >/dev/null || ! command -v dciodvfy >/dev/null \
	    || ! command -v chromium >/dev/null \
	    || ! command -v openssl >/dev/null || ! command -v certutil >/dev/null \
	    || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	    || ! { command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ]; }; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(PEERS); \
	fi

# the prebuilt OHIF viewer the browser test drives: @ohif/app, pinned and sha512-checked in
# tests/peers/ohif.py, fetched once with npm into ~/.cache/segnode/ohif (never into the repository)
ohif: install
	$(PY) -m tests.peers.ohif

lint: install
	$(VENV)/bin/ruff check node ai viewer_api tests bench

test: peers install ohif lint
	$(VENV)/bin/pytest -q

unit: install
	$(VENV)/bin/pytest -q tests/unit

clean:
	rm -rf $(VENV) data .pytest_cache
