# Two commands do all set-up on a fresh machine:
#   make demo   -> .venv + quickstart sweep on the synthetic market (local Ray) + ensemble scoring report
#   make test   -> .venv + the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel of torch (the CI / laptop install). GPU nodes: see README "GPU install".
TORCH  ?= torch==2.13.0
STORAGE ?= runs
NAME    ?= quickstart

.PHONY: venv demo test bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	# real price panel for the ingest tests: skfolio ships 20 S&P 500 closes; only its data file is used
	$(BIN)/pip install -q --no-deps "skfolio==1.12.2"
	# real daily OHLCV with volume for the vendor-file tests: arch ships the S&P 500 and NASDAQ Composite
	# (1999-2018); only its data files are read (tests/real_ohlcv.py), never the package
	$(BIN)/pip install -q --no-deps "arch==8.0.0"
	touch $@

demo: venv
	$(BIN)/python -m crnn_ray.sweep --config configs/sweeps/quickstart.yaml --storage $(STORAGE) --name $(NAME) --overwrite
	$(BIN)/python -m crnn_ray.score --experiment $(STORAGE)/$(NAME) --out $(STORAGE)/$(NAME)/score
	@echo "report: $(STORAGE)/$(NAME)/score/report.html"

test: venv
	$(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/python bench/metrics_bench.py
	$(BIN)/python bench/zoo_bench.py
	$(BIN)/python bench/quota_bench.py
	$(BIN)/python bench/score_bench.py
	$(BIN)/python bench/scale_bench.py

clean:
	rm -rf $(STORAGE) .pytest_cache
