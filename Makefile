.PHONY: install test test-slow bench

install:
	bash scripts/install.sh

test: install
	.venv/bin/python -m pytest -m "not slow and not gpu" -q

test-slow: install
	.venv/bin/python -m pytest -m "slow and not gpu" -q

bench: install
	.venv/bin/python -m bench.model_speed
