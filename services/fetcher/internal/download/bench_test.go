package download

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
	"github.com/postern/postern/services/fetcher/internal/pop3"
)

// TestFetchBenchmark compares Postern's downloader with fetchmail on the
// same Dovecot mailboxes, in the same run. It is a benchmark, not a test:
// it runs only when POSTERN_BENCH_FETCH_N is set (bench/fetch/run.sh sets
// it), and reports figures instead of asserting on them.
//
//	POSTERN_BENCH_FETCH_N         messages in all (default of run.sh: 10000)
//	POSTERN_BENCH_FETCH_ACCOUNTS  accounts of the parallel round (default 4)
//
// Messages: 70% about 4 KiB, 25% about 40 KiB, 5% about 400 KiB. Round 1:
// one account holding all N. Round 2: the N messages spread over several
// accounts. Postern downloads into mail.inbound on the embedded broker
// (acks=all) with the ledger and duplicate keys in SQLite on disk;
// fetchmail delivers through procmail into a Maildir on disk, polling the
// accounts one after the other (one process, as one configuration file
// does) and, for comparison, one process per account at the same time.
// Both leave the messages on the server (keep), so they read the same
// mailboxes.
func TestFetchBenchmark(t *testing.T) {
	nStr := os.Getenv("POSTERN_BENCH_FETCH_N")
	if nStr == "" {
		t.Skip("benchmark: set POSTERN_BENCH_FETCH_N (see bench/fetch/run.sh)")
	}
	n, err := strconv.Atoi(nStr)
	if err != nil || n < 1 {
		t.Fatalf("POSTERN_BENCH_FETCH_N=%q is not a positive number", nStr)
	}
	accounts := 4
	if s := os.Getenv("POSTERN_BENCH_FETCH_ACCOUNTS"); s != "" {
		if accounts, err = strconv.Atoi(s); err != nil || accounts < 1 {
			t.Fatalf("POSTERN_BENCH_FETCH_ACCOUNTS=%q is not a positive number", s)
		}
	}
	fetchmail, err := exec.LookPath("fetchmail")
	if err != nil {
		t.Fatal("fetchmail is not installed (apt-get install fetchmail procmail)")
	}
	procmail, err := exec.LookPath("procmail")
	if err != nil {
		t.Fatal("procmail is not installed (apt-get install procmail)")
	}

	// Mailboxes: "single" holds all n; "par-1".."par-k" share them.
	single := testenv.DovecotUser{Username: "single@isp.test", Password: "bench-pw"}
	users := []testenv.DovecotUser{single}
	for i := 1; i <= accounts; i++ {
		users = append(users, testenv.DovecotUser{Username: fmt.Sprintf("par-%d@isp.test", i), Password: "bench-pw"})
	}
	d := testenv.StartDovecot(t, testenv.DovecotOptions{Users: users, MailDir: memMailDir(t)})
	t.Cleanup(func() { time.Sleep(300 * time.Millisecond) })
	genStart := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	var total int64
	for i := range n {
		var size int
		switch p := rng.IntN(100); {
		case p < 70:
			size = 3<<10 + rng.IntN(2<<10)
		case p < 95:
			size = 30<<10 + rng.IntN(20<<10)
		default:
			size = 300<<10 + rng.IntN(200<<10)
		}
		m := benchMessage(rng, i, size)
		total += int64(len(m))
		d.DeliverToMaildir(t, single.Username, m)
		d.DeliverToMaildir(t, users[1+i%accounts].Username, m)
	}
	mb := float64(total) / 1e6
	t.Logf("generated %d messages, %.1f MB, in %s", n, mb, time.Since(genStart).Round(time.Millisecond))

	h, p := hostPort(t, d.POP3Addr)
	// Warm Dovecot's indexes so that neither tool pays for them.
	for _, u := range users {
		c, err := pop3.Dial(t.Context(), d.POP3Addr, pop3.Options{Timeout: time.Minute})
		mustNoErr(t, "warm-up dial", err)
		mustNoErr(t, "warm-up auth", c.Auth(t.Context(), u.Username, u.Password, pop3.User))
		_, err = c.UIDL(t.Context())
		mustNoErr(t, "warm-up uidl", err)
		c.Quit(t.Context())
	}

	type row struct {
		what     string
		accounts int
		secs     float64
	}
	var rows []row
	report := func(what string, accts int, dur time.Duration) {
		rows = append(rows, row{what, accts, dur.Seconds()})
		t.Logf("%-42s %d account(s): %6.2fs  %7.0f msg/s  %6.1f MB/s", what, accts, dur.Seconds(), float64(n)/dur.Seconds(), mb/dur.Seconds())
	}

	runFetchmail := func(name string, us []testenv.DovecotUser, parallel bool) time.Duration {
		dir := t.TempDir()
		maildir := filepath.Join(dir, "Maildir")
		for _, sub := range []string{"cur", "new", "tmp"} {
			mustNoErr(t, "maildir", os.MkdirAll(filepath.Join(maildir, sub), 0o700))
		}
		rc := filepath.Join(dir, "procmailrc")
		mustNoErr(t, "procmailrc", os.WriteFile(rc, []byte("LOGFILE=/dev/null\n:0\n"+maildir+"/\n"), 0o600))
		poll := func(u testenv.DovecotUser) string {
			return fmt.Sprintf("poll %s port %d proto pop3 uidl no envelope\n  user %q there with password %q\n  mda %q\n  options keep fetchall no rewrite sslproto ''\n",
				h, p, u.Username, u.Password, procmail+" -m "+rc)
		}
		var cmds [][]string // rc files, one per process
		if parallel {
			for _, u := range us {
				cmds = append(cmds, []string{poll(u)})
			}
		} else {
			var all []string
			for _, u := range us {
				all = append(all, poll(u))
			}
			cmds = append(cmds, all)
		}
		var procs []*exec.Cmd
		for i, polls := range cmds {
			home := filepath.Join(dir, fmt.Sprintf("home-%d", i))
			mustNoErr(t, "home", os.MkdirAll(home, 0o700))
			rcFile := filepath.Join(home, "fetchmailrc")
			mustNoErr(t, "fetchmailrc", os.WriteFile(rcFile, []byte("set no syslog\nset no bouncemail\n"+strings.Join(polls, "")), 0o600))
			cmd := exec.Command(fetchmail, "-f", rcFile, "--pidfile", filepath.Join(home, "fetchmail.pid"), "--nosyslog", "--silent")
			cmd.Env = append(os.Environ(), "FETCHMAILHOME="+home, "HOME="+home)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			procs = append(procs, cmd)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("fetchmail %s output:\n%s", name, out.String())
				}
			})
		}
		settle()
		start := time.Now()
		var wg sync.WaitGroup
		errs := make([]error, len(procs))
		for i, cmd := range procs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = cmd.Run() }()
		}
		wg.Wait()
		dur := time.Since(start)
		for _, err := range errs {
			if err != nil {
				t.Errorf("fetchmail %s: %v", name, err)
			}
		}
		got := 0
		for _, sub := range []string{"new", "cur"} {
			es, _ := os.ReadDir(filepath.Join(maildir, sub))
			got += len(es)
		}
		if got != n {
			t.Errorf("fetchmail %s delivered %d messages, want %d", name, got, n)
		}
		return dur
	}

	runPostern := func(name string, us []testenv.DovecotUser, redis bool) time.Duration {
		e := newEnv(t)
		if redis {
			e = newEnvWith(t, benchRedis(t))
		}
		e.user("u-alice", "alice", "alice@example.com")
		for i, u := range us {
			e.account(replica.POP3Account{ID: fmt.Sprintf("a-%d", i), Name: u.Username, Host: h, Port: p, TLS: replica.TLSNone, AllowInsecure: true,
				Auth: replica.AuthUser, Username: u.Username, Password: u.Password, Mode: replica.ModeSingle, TargetUser: "u-alice",
				Keep: replica.KeepPolicy{Policy: replica.KeepForever}, Enabled: true})
		}
		cfg := DefaultConfig()
		cfg.Concurrency = len(us)
		dl := e.downloader(cfg, func(o *Options) {
			o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		})
		settle()
		start := time.Now()
		res, err := dl.Cycle(context.Background())
		dur := time.Since(start)
		mustNoErr(t, "postern "+name, err)
		got := 0
		for _, r := range res {
			got += r.Downloaded
		}
		if got != n {
			t.Errorf("postern %s downloaded %d messages, want %d", name, got, n)
		}
		return dur
	}

	withRedis := os.Getenv("POSTERN_BENCH_FETCH_REDIS") != "0"
	fm1 := runFetchmail("one account", []testenv.DovecotUser{single}, false)
	report("fetchmail + procmail -> Maildir", 1, fm1)
	pg1 := runPostern("one account", []testenv.DovecotUser{single}, false)
	report("postern -> mail.inbound (SQLite state)", 1, pg1)
	if withRedis {
		report("postern -> mail.inbound (Redis state)", 1, runPostern("one account, redis", []testenv.DovecotUser{single}, true))
	}
	fmSeq := runFetchmail("accounts in turn", users[1:], false)
	report("fetchmail, one process, accounts in turn", accounts, fmSeq)
	fmPar := runFetchmail("one process per account", users[1:], true)
	report("fetchmail, one process per account", accounts, fmPar)
	pgPar := runPostern("accounts in parallel", users[1:], false)
	report("postern, accounts in parallel (SQLite)", accounts, pgPar)
	if withRedis {
		report("postern, accounts in parallel (Redis)", accounts, runPostern("accounts in parallel, redis", users[1:], true))
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\nRESULTS n=%d messages, %.1f MB\n", n, mb)
	fmt.Fprintf(&b, "| run | accounts | seconds | messages/s | MB/s |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %.2f | %.0f | %.1f |\n", r.what, r.accounts, r.secs, float64(n)/r.secs, mb/r.secs)
	}
	fmt.Fprintf(&b, "rate ratio postern (SQLite) / fetchmail, one account: %.2f\n", fm1.Seconds()/pg1.Seconds())
	fmt.Fprintf(&b, "rate ratio postern parallel (SQLite) / fetchmail accounts in turn: %.2f\n", fmSeq.Seconds()/pgPar.Seconds())
	fmt.Fprintf(&b, "rate ratio postern parallel (SQLite) / fetchmail one process per account: %.2f\n", fmPar.Seconds()/pgPar.Seconds())
	t.Log(b.String())
}

// settle writes dirty pages out before a measured run, so that one run
// does not pay for the previous run's writes (procmail's Maildir files,
// the broker's log).
func settle() {
	syscall.Sync()
	time.Sleep(time.Second)
}

// benchMessage is a message of about size bytes with a unique Message-ID
// and some body lines starting with a dot.
func benchMessage(rng *rand.Rand, i, size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 512)
	fmt.Fprintf(&b, "Return-Path: <sender%d@example.net>\r\nFrom: Sender <sender%d@example.net>\r\nTo: org@isp.test\r\n", i%97, i%97)
	fmt.Fprintf(&b, "Subject: benchmark message %d\r\nMessage-ID: <bench.%d@example.net>\r\nDate: Tue, 3 Mar 2026 10:00:00 +0100\r\n", i, i)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-"
	line := make([]byte, 0, 80)
	for b.Len() < size {
		line = line[:0]
		if rng.IntN(30) == 0 {
			line = append(line, '.')
		}
		for range 60 + rng.IntN(16) {
			line = append(line, chars[rng.Uint32()%uint32(len(chars))])
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// benchRedis opens the site state on the test Redis under a key prefix of
// its own, deleted afterwards.
func benchRedis(t *testing.T) sitestate.Store {
	addr := testenv.RedisAddr(t)
	prefix := fmt.Sprintf("postern-bench-fetch:%d:", time.Now().UnixNano())
	st, err := sitestate.OpenRedis(t.Context(), sitestate.RedisConfig{Addr: addr, KeyPrefix: prefix})
	mustNoErr(t, "redis", err)
	t.Cleanup(func() {
		st.Close()
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		defer c.Close()
		ctx := context.Background()
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			if keys = append(keys, iter.Val()); len(keys) == 1000 {
				c.Del(ctx, keys...)
				keys = keys[:0]
			}
		}
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	})
	return st
}
