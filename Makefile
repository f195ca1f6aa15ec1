# The two commands of the README: `make run` and `make test`.  Both run the
# idempotent set-up step first.
PY := .venv/bin/python
TWISTD := .venv/bin/twistd
ARGS ?=

.PHONY: setup setup-test run test test-unprivileged lint bench wheel clean

setup:
	@scripts/setup.sh

setup-test:
	@scripts/setup.sh --test

run: setup
	$(TWISTD) -n --pidfile= mathrun $(ARGS)

lint: setup-test
	.venv/bin/ruff check mathrun twisted tests bench
	.venv/bin/ruff format --check mathrun twisted tests bench

# As root, the suite runs twice: as root (privileged mode), then its
# sandbox, job and Maxima tests as an unprivileged user, inside a pids and a
# memory cgroup the script makes (test-unprivileged; not with ARGS).
test: lint
	.venv/bin/pytest $(ARGS)
	@if [ "$$(id -u)" = 0 ] && [ -z "$(ARGS)" ]; then scripts/test-unprivileged.sh; fi

test-unprivileged: setup-test
	scripts/test-unprivileged.sh

bench: setup
	@bash -c '. scripts/lib.sh && install_missing wrk'
	$(PY) bench/sandbox_bench.py
	$(PY) bench/maxima_bench.py

# The package as a wheel in dist/ (ext/, lisp/ and scripts/ inside it, as
# package data; see docs/deployment.md).
wheel: setup
	rm -rf build
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	$(MAKE) -C ext clean
	rm -rf .venv .build .pytest_cache .hypothesis build dist
