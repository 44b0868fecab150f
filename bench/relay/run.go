package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

var sizes = []int{4 << 10, 40 << 10}

type result struct {
	system   string
	inj      *injectResult
	p50, p99 time.Duration
	e2e      time.Duration
}

func run(n, sessions int, systems string) error {
	sk, err := startSink()
	if err != nil {
		return err
	}
	var results []result
	for _, sys := range strings.Split(systems, ",") {
		var addr string
		var stop func()
		switch sys {
		case "postfix":
			dir, err := os.MkdirTemp("", "relay-bench-postfix-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			pf, err := startPostfix(dir, 25250, sk.addr)
			if err != nil {
				return err
			}
			addr, stop = "127.0.0.1:25250", pf.stop
		case "postern":
			a, s, err := startPostern(sk.addr)
			if err != nil {
				return err
			}
			addr, stop = a, s
		default:
			return fmt.Errorf("unknown system %q", sys)
		}
		fmt.Printf("%s: injecting %d messages over %d sessions into %s\n", sys, n, sessions, addr)
		inj, err := inject(addr, sys, n, sessions, sizes, "bench@bench.example", "rcpt@remote.example")
		if err != nil {
			stop()
			return fmt.Errorf("%s: %w", sys, err)
		}
		arr, err := sk.waitFor(sys, len(inj.accepted), 15*time.Minute)
		stop()
		if err != nil {
			return fmt.Errorf("%s: %w", sys, err)
		}
		r := result{system: sys, inj: inj}
		r.p50, r.p99 = latencies(inj.accepted, arr)
		var last time.Time
		for _, at := range arr {
			if at.After(last) {
				last = at
			}
		}
		r.e2e = last.Sub(inj.start)
		results = append(results, r)
	}
	fmt.Printf("\n%-8s %9s %12s %10s %14s %12s %12s %s\n", "system", "accepted", "accepted/s", "MB/s", "last at sink", "p50 to sink", "p99 to sink", "errors")
	for _, r := range results {
		secs := r.inj.elapsed.Seconds()
		fmt.Printf("%-8s %9d %12.0f %10.1f %14s %12s %12s %d\n", r.system, len(r.inj.accepted), float64(len(r.inj.accepted))/secs,
			float64(r.inj.bytes)/secs/1e6, r.e2e.Round(time.Millisecond), r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond), r.inj.errors)
	}
	if len(results) == 2 {
		a := float64(len(results[0].inj.accepted)) / results[0].inj.elapsed.Seconds()
		b := float64(len(results[1].inj.accepted)) / results[1].inj.elapsed.Seconds()
		fmt.Printf("\naccepted rate %s/%s = %.2f\n", results[0].system, results[1].system, a/b)
	}
	if sk.dups > 0 {
		fmt.Printf("the sink received %d duplicates\n", sk.dups)
	}
	return nil
}
