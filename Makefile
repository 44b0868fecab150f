# Postern — see README.md. Every target works on a fresh machine with Go 1.26.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
# Every module of the workspace (go.work); patterns reach all of them.
PKGS := ./... ./api/... ./internal/... ./services/users/... ./services/fetcher/... ./services/router/... ./services/relay/...
STATICCHECK_VERSION := v0.8.2
REDOCLY_CLI_VERSION := 2.77.0
TEST_TIMEOUT ?= 25m
BENCHTIME ?= 3s

.PHONY: run dovecot build test test-race generate generate-check lint openapi-lint check bench bench-e2e fuzz clean

## run: Postern in one process on the embedded defaults (broker, SQLite, Maildir under ./var)
run:
	$(GO) run ./cmd/postern serve

## dovecot: a private Dovecot reading the single box's mailboxes (IMAP 127.0.0.1:10143, POP3 :10110)
dovecot:
	bash deployments/dovecot/single-box.sh var

## build: every binary into ./bin
build:
	$(GO) build -o $(BIN)/ ./cmd/postern ./services/users/cmd/users ./services/fetcher/cmd/fetcher ./services/router/cmd/router ./services/relay/cmd/relay

## test: all tests of every module (integration tests need Redis, PostgreSQL, Dovecot: see .ci/run)
test:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

## test-race: the same under the race detector (slower)
test-race:
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

## generate: regenerate every generated file (go:generate directives)
generate:
	$(GO) generate $(PKGS)

## generate-check: fail if a generated file is not what `make generate` produces
generate-check: generate
	@if [ -n "$$(git status --porcelain -- docs ':(glob)**/*.gen.go')" ]; then \
		echo "generated files are out of date; run 'make generate' and commit:"; \
		git status --porcelain -- docs ':(glob)**/*.gen.go'; git --no-pager diff --stat -- docs ':(glob)**/*.gen.go'; exit 1; fi

## lint: gofmt, go vet, staticcheck
lint: $(BIN)/staticcheck
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(BIN)/staticcheck $(PKGS)

$(BIN)/staticcheck:
	GOBIN=$(BIN) GOWORK=off $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## openapi-lint: lint the users service's OpenAPI document (Redocly CLI from npm, needs node)
openapi-lint:
	npx --yes @redocly/cli@$(REDOCLY_CLI_VERSION) lint --config api/openapi/redocly.yaml api/openapi/users.yaml

## check: what CI runs before the tests
check: lint generate-check openapi-lint

## bench: bus throughput on the embedded broker (see README "Benchmarks")
bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 30m ./internal/msgbus/

## bench-e2e: N messages (POP3 and SMTP) through a single box to mailboxes and the sink; messages/s and p50/p99 latency (README "Benchmarks")
N ?= 10000
bench-e2e:
	POSTERN_E2E_BENCH=$(N) CI=true $(GO) test -count=1 -run '^TestE2EBenchmark$$' -v -timeout 60m ./e2e/

## fuzz: a short run of every fuzz target (FUZZTIME each)
FUZZTIME ?= 30s
fuzz:
	@grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do \
		dir=$$(dirname $$f); for fn in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do \
			echo "== $$dir $$fn"; $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$dir || exit 1; done; done

clean:
	rm -rf $(BIN)
