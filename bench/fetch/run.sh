#!/usr/bin/env bash
# Benchmark: Postern's POP3 downloader against fetchmail, on the same local
# Dovecot mailboxes, in the same run.
#
#   bench/fetch/run.sh              # N=10000 messages, 4 accounts in the parallel round
#   N=500 bench/fetch/run.sh        # a quick run
#   N=10000 ACCOUNTS=8 bench/fetch/run.sh
#
# Messages: 70% ~4 KiB, 25% ~40 KiB, 5% ~400 KiB, some body lines starting
# with a dot. Postern downloads into mail.inbound on the embedded broker
# (acks=all), with its UIDL ledger and duplicate keys in SQLite on disk
# (synchronous=FULL); fetchmail delivers through procmail (an MDA, one
# process per message) into a Maildir on disk. Round 1: one account holding
# all N messages. Round 2: the same N spread over ACCOUNTS accounts — Postern
# downloads them in parallel; fetchmail once with one process polling them in
# turn (one configuration file) and once with one process per account.
#
# The work is done by TestFetchBenchmark in
# services/fetcher/internal/download/bench_test.go (it needs the internal
# packages); it starts a private Dovecot through testenv. Needs: go,
# dovecot, fetchmail, procmail (installed with apt-get when missing and
# running as root).
set -euo pipefail

N="${N:-10000}"
ACCOUNTS="${ACCOUNTS:-4}"
root="$(cd "$(dirname "$0")/../.." && pwd)"

need=()
command -v fetchmail >/dev/null || need+=(fetchmail)
command -v procmail >/dev/null || need+=(procmail)
command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ] || need+=(dovecot-pop3d dovecot-imapd dovecot-lmtpd)
if [ "${#need[@]}" -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "installing ${need[*]}" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null ||
			{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
	else
		echo "missing: ${need[*]} (apt-get install ${need[*]})" >&2
		exit 1
	fi
fi

echo "machine: $(nproc) CPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GiB, $(go version | cut -d' ' -f3-)"
echo "fetchmail $(fetchmail --version 2>/dev/null | sed -n 's/^This is fetchmail release \([^+ ]*\).*/\1/p'), $(dovecot --version 2>/dev/null || /usr/sbin/dovecot --version)"
echo "N=$N messages, $ACCOUNTS accounts in the parallel round"

cd "$root/services/fetcher"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if ! CI=true POSTERN_BENCH_FETCH_N="$N" POSTERN_BENCH_FETCH_ACCOUNTS="$ACCOUNTS" \
	go test -count=1 -run '^TestFetchBenchmark$' -v -timeout 60m ./internal/download/ >"$out" 2>&1; then
	cat "$out" >&2
	exit 1
fi
# The figures: t.Log lines of the test, without the file:line prefix.
sed -n 's/^ *bench_test.go:[0-9]*: //p; /RESULTS/,/^ *$/{s/^ *//p}' "$out"
