# casethread: the two commands of the README (DESIGN §9) and their helpers.
#   make run   install what is missing, start the milter on the embedded defaults
#   make test  install everything (Postfix included), run ruff, mypy and the whole test suite

# The distribution's interpreter when it is 3.11 or newer: the one the README's install uses
# (`apt-get install python3-venv`, `python3 -m venv`), so tests and benchmarks run what a server
# runs. Debian builds it with PGO and LTO; a pyenv build (first in PATH on some images) is not,
# and runs the engine ~20 % slower (README, Performance). Else: python3 in PATH.
ifndef PYTHON
PYTHON := $(shell /usr/bin/python3 -c 'import sys; assert sys.version_info >= (3, 11)' \
	2>/dev/null && echo /usr/bin/python3 || echo python3)
endif
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# libmilter-dev: pymilter compiles against libmilter/mfapi.h. For the tests: postfix (end to
# end), m4 (Sendmail's config), dovecot-sieve and procmail (the filing examples in contrib/),
# systemd (systemd-analyze checks the unit), opendkim and opendkim-tools (a DKIM signer beside
# casethread, tests/e2e/test_dkim_signer.py; on a systemd host the package also starts its own
# opendkim service on /run/opendkim/opendkim.sock), sasl2-bin and libsasl2-modules (a real
# SMTP AUTH login, Cyrus SASL with a private sasldb: saslpasswd2 and the PLAIN module,
# tests/e2e/test_auth_ipv6.py). Sendmail itself is unpacked, never
# installed: it would remove Postfix (contrib/sendmail/unpack-sendmail.sh).
# A distribution's interpreter (installed under /usr) comes in packages of its own, named by
# its version: -venv makes the venv, -dev has the headers pymilter compiles against, and
# libpythonX.Y-testsuite holds the standard library's tests (CPython's MIME corpus, which
# tests/unit reads). Empty for any other interpreter, which carries all three itself.
DIST_PY := $(shell $(PYTHON) -c \
	'import sys; sys.base_prefix == "/usr" and print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
RUN_DEBS  := libmilter-dev gcc $(if $(DIST_PY),python$(DIST_PY)-venv python$(DIST_PY)-dev)
TEST_DEBS := $(RUN_DEBS) postfix m4 dovecot-sieve procmail systemd opendkim opendkim-tools \
	sasl2-bin libsasl2-modules \
	$(if $(DIST_PY),libpython$(DIST_PY)-testsuite)

.PHONY: run test lint unit e2e fuzz soak bench bench-quick deps-run deps-test clean

run: deps-run $(STAMP)
	$(BIN)/casethread serve

test: deps-test $(STAMP) lint
	$(BIN)/pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check milter tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit tests/protocol

e2e: deps-test $(STAMP)
	$(BIN)/pytest -q tests/wire tests/e2e

# Longer randomised runs than `make test` does (hypothesis example counts from the environment).
fuzz: $(STAMP)
	CASETHREAD_FUZZ_EXAMPLES=20000 $(BIN)/pytest -q tests/unit/test_fuzz_engine.py \
		tests/unit/test_mime.py tests/unit/test_stamp.py tests/unit/test_bodytext.py \
		tests/unit/test_mime_corpus.py tests/unit/test_fuzz_mutations.py \
		-k "fuzz or generated or never"

# 20,000 mixed messages through a real Postfix and the real milter (bench/soak.py --help).
soak: deps-test $(STAMP)
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# The performance harness: Postfix smtp-source -> Postfix (+milter) -> smtp-sink, then the
# engine and index micro-benchmarks (both write bench/results.jsonl), then the most one milter
# process takes alone on one CPU. See bench/README.md.
bench: deps-test $(STAMP)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/core.py
	$(BIN)/python bench/ceiling.py

bench-quick: deps-test $(STAMP)
	$(BIN)/python bench/run.py --quick
	$(BIN)/python bench/core.py --quick

deps-run:
	@DEBS="$(RUN_DEBS)" sh contrib/install-debs.sh

deps-test:
	@DEBS="$(TEST_DEBS)" sh contrib/install-debs.sh
	@sh contrib/sendmail/unpack-sendmail.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "casethread needs Python 3.11+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build milter/*.egg-info .mypy_cache .ruff_cache .hypothesis
