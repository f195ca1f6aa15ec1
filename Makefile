# The two commands of the README: `make run` and `make test`.  Both run the
# idempotent set-up step first.
PY := .venv/bin/python
TWISTD := .venv/bin/twistd
ARGS ?=

.PHONY: setup run test lint bench clean

setup:
	@scripts/setup.sh

run: setup
	$(TWISTD) -n --pidfile= mathrun $(ARGS)

lint: setup
	.venv/bin/ruff check mathrun twisted tests bench
	.venv/bin/ruff format --check mathrun twisted tests bench

test: lint
	.venv/bin/pytest $(ARGS)

bench: setup
	@bash -c '. scripts/lib.sh && install_missing wrk'
	$(PY) bench/sandbox_bench.py
	$(PY) bench/maxima_bench.py

clean:
	$(MAKE) -C ext clean
	rm -rf .venv .build .pytest_cache .hypothesis
