# wg-site-to-site: every target installs what it needs (Debian 12, as root).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

STACK ?= dev
# make lab-bench: fresh labs to take the median of, and where the figures go.
RUNS ?= 5
BENCH_JSON ?= build/lab-bench.json
# make plan-bench: the offline plan of a SITES-site AWS mesh, RUNS times (issue 15: 10 in 5 s).
SITES ?= 10
PLAN_BENCH_JSON ?= build/plan-bench.json
# make failover-bench: a stack with two gateways per site (a name or a stack file's path).
FAILOVER_STACK ?= tests/stacks/Pulumi.ha.yaml
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the tests and the lab use: WireGuard (kernel or wireguard-go),
# the network tools the lab drives, cloud-init for schema checks, and shellcheck for the
# office bundle's install.sh.
APT_PACKAGES := wireguard-tools wireguard-go iproute2 iptables nftables iputils-ping curl \
	mtr-tiny iperf3 procps psmisc cloud-init shellcheck

.PHONY: help deps test lint typecheck unit lab lab-down lab-bench failover-bench plan plan-bench pin policy \
	test-stack test-stack-destroy test-stack-sweep e2e site-bundle clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

.deps-apt.stamp: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# Node may come from elsewhere than Debian (its npm package then conflicts): only
	@# install Debian's when there is none.
	@command -v npm >/dev/null || { apt-get update -qq; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
	@touch $@

$(VENV)/.installed: requirements.lock pyproject.toml | .deps-apt.stamp
	@command -v python3.11 >/dev/null || { echo "python3.11 is required" >&2; exit 1; }
	@test -x $(PY) || python3.11 -m venv $(VENV)
	@# (this machine's pip config names local mirrors that may be absent: not news)
	@$(PY) -m pip install -q --disable-pip-version-check --no-compile -r requirements.lock \
		2> >(grep -v '^WARNING: Location' >&2)
	@# Byte-compiled here rather than by pip, which compiles one file at a time: compileall
	@# uses every core (pulumi-aws alone is thousands of modules). Not the packages nothing
	@# here imports (moto[server]'s CloudFormation linter and its sympy and networkx, pip,
	@# setuptools): a third of the files, 4-5 s of every fresh install.
	@$(PY) -m compileall -q -j0 -x '/site-packages/(sympy|networkx|cfnlint|pip|setuptools)/' \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null
	@touch $@

node_modules/.installed: package.json package-lock.json | .deps-apt.stamp
	@npm ci --silent --no-audit --no-fund >/dev/null
	@touch $@

deps: .deps-apt.stamp $(VENV)/.installed node_modules/.installed ## install Debian, Python and npm dependencies

LINT := $(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
TYPECHECK := $(VENV)/bin/mypy .

lint: deps ## ruff (lint and format check)
	$(LINT)

typecheck: deps ## mypy, strict, against pulumi-aws's typed SDK
	$(TYPECHECK)

# The lab tests (marker `lab`) mostly wait on pings, handshakes and timers, and share fixed
# namespace names: one pytest process runs them in the foreground (Ctrl-C reaches it, and
# it takes its lab down), while lint, types and every other test run beside it, niced (the
# lab is the longer path) in a process group of their own (stopped on Ctrl-C), into
# build/test-others.log, shown once both are done. Either failing fails the target.
test: deps ## everything CI runs: lint, types, unit, policy and lab tests
	@mkdir -p build
	@setsid nice -n 10 bash -c '$(LINT) && $(TYPECHECK) && $(PY) -m pytest -m "not lab" -p no:cacheprovider --durations=10' \
		>build/test-others.log 2>&1 & \
	others=$$!; \
	trap 'kill -TERM -- -$$others 2>/dev/null; exit 130' INT TERM; \
	lab=0; $(PY) -m pytest -m lab --durations=10 || lab=$$?; \
	rest=0; wait $$others || rest=$$?; \
	echo "--- lint, types and the tests outside the lab (build/test-others.log) ---"; \
	cat build/test-others.log; \
	echo "lab tests: exit $$lab; lint, types and the other tests: exit $$rest"; \
	test $$lab -eq 0 && test $$rest -eq 0

plan: deps ## offline plan of STACK (no credentials): make plan STACK=dev [ARGS="--diff main"]
	$(PY) -m plan $(STACK) $(ARGS)

plan-bench: deps ## offline plan benchmark: a SITES-site mesh (default 10), median of RUNS runs
	$(PY) -m plan.bench --sites $(SITES) --runs $(RUNS) --output $(PLAN_BENCH_JSON)

pin: deps ## pin each site's current Ubuntu build and a zone into STACK's file (needs AWS)
	$(PY) -m tools.pin $(STACK)

policy: deps ## offline policy check of STACK's plan
	$(PY) -m policy.offline $(STACK)

lab: deps ## stand up STACK's two sites in network namespaces and check the tunnel (root)
	$(PY) -m lab up $(STACK)

lab-down: deps ## remove everything the lab made
	$(PY) -m lab down

lab-bench: deps ## lab benchmark (RUNS=5 fresh labs): first packet, tunnel vs plain throughput, teardown
	$(PY) -m lab bench $(STACK) --runs $(RUNS) --output $(BENCH_JSON)

failover-bench: deps ## kill each site's active gateway RUNS times (FAILOVER_STACK, gateways: 2): pings lost, median (root)
	$(PY) -m lab failover $(FAILOVER_STACK) --runs $(RUNS); status=$$?; $(PY) -m lab down > /dev/null; exit $$status

test-stack: deps ## create ephemeral stack test-NAME from BASE (default dev), alerts to ALERTS_EMAIL
	$(PY) -m tools.ephemeral create --name "$(NAME)" --base "$(or $(BASE),dev)" \
		$(if $(ALERTS_EMAIL),--alerts-email "$(ALERTS_EMAIL)")

test-stack-destroy: deps ## destroy ephemeral stack test-NAME, keeping committed stack files
	$(PY) -m tools.ephemeral destroy --name "$(NAME)"

test-stack-sweep: deps ## destroy every test-* stack past its expires-at (DRY_RUN=1 lists them)
	$(PY) -m tools.ephemeral sweep $(if $(DRY_RUN),--dry-run)

e2e: deps ## the whole proof on a real AWS account with STACK's config (needs AWS; ~45 min max)
	@$(PY) -m tools.e2e $(STACK) $(ARGS)

site-bundle: deps ## write out/STACK/SITE/ for a site outside AWS: make site-bundle STACK=x SITE=office (needs AWS)
	@$(PY) -m tools.site_bundle "$(STACK)" "$(SITE)"

clean: ## remove the virtualenv, node_modules and caches
	rm -rf $(VENV) node_modules .deps-apt.stamp .pytest_cache .mypy_cache .ruff_cache
