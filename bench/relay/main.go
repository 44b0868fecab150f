// Command relay-bench measures SMTP acceptance and relaying: it injects N
// messages (4 KiB and 40 KiB) over parallel SMTP sessions into Postern's
// relay, whose smarthost is an SMTP sink, and the same load into a private
// Postfix relaying to the same sink; it reports accepted messages/s and
// the time until the last message reached the sink, for both.
//
//	go run ./bench/relay -n 10000 -sessions 20
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	n := flag.Int("n", 10000, "messages per system")
	sessions := flag.Int("sessions", 20, "parallel SMTP sessions")
	systems := flag.String("systems", "postern,postfix", "which systems to measure")
	flag.Parse()
	if err := run(*n, *sessions, *systems); err != nil {
		fmt.Fprintln(os.Stderr, "relay-bench:", err)
		os.Exit(1)
	}
}

func waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
