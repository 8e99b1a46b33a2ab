PYTHON ?= python

.PHONY: test quality style bench

test:
	$(PYTHON) -m pytest -q

quality:
	ruff check .
	ruff format --check .

style:
	ruff check --fix .
	ruff format .

bench:
	$(PYTHON) benchmarks/bench_decoder.py --full_forward
	$(PYTHON) benchmarks/bench_pipeline.py --setting all
	$(PYTHON) benchmarks/bench_train.py
