.PHONY: install test test-slow bench demo demo-check

install:
	bash scripts/install.sh

test: install
	.venv/bin/python -m pytest -m "not slow and not gpu" -q

# pytest exits 5 when no test is selected; that is not a failure for this optional job.
test-slow: install
	.venv/bin/python -m pytest -m "slow and not gpu" -q $(SLOW_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: install
	.venv/bin/python -m bench.model_speed

# The demo: synthetic library, demo checkpoints, index, service (see README).
demo:
	bash scripts/demo.sh

demo-check:
	bash scripts/demo.sh --check
