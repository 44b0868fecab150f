package smtpout_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/postern/postern/services/relay/internal/smtpout"
	"github.com/postern/postern/services/relay/internal/smtpout/sinktest"
)

// TestHooksRunBeforeDataAndRightAfterThe250: BeforeData sees the
// recipients the server accepted at RCPT before any of the message is
// sent; Accepted sees the delivered ones once the final dot is answered.
func TestHooksRunBeforeDataAndRightAfterThe250(t *testing.T) {
	var (
		mu     sync.Mutex
		events []string
	)
	note := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, s)
	}
	sink := sinktest.Start(t, sinktest.Options{
		Rcpt: func(to string) error {
			if to == "gone@example.net" {
				return sinktest.Reply(550, [3]int{5, 1, 1}, "no such user")
			}
			return nil
		},
		Data: func(to []string) error { note("server has the message"); return nil },
	})
	p := newPool(t, smtpout.Options{Addr: sink.Addr})
	var before, accepted []string
	res := p.SendHooked(context.Background(), "a@example.com", []string{"b@example.net", "gone@example.net", "c@example.net"}, msg, smtpout.Hooks{
		BeforeData: func(rcpts []string) error { before = rcpts; note("before data"); return nil },
		Accepted:   func(rcpts []string) { accepted = rcpts; note("accepted") },
	})
	if !res[0].Delivered() || res[1].Delivered() || !res[2].Delivered() {
		t.Fatalf("results %+v", res)
	}
	want := []string{"b@example.net", "c@example.net"}
	if !slices.Equal(before, want) || !slices.Equal(accepted, want) {
		t.Errorf("BeforeData got %v, Accepted got %v, want %v for both", before, accepted, want)
	}
	if w := []string{"before data", "server has the message", "accepted"}; !slices.Equal(events, w) {
		t.Errorf("order %v, want %v", events, w)
	}
}

// TestBeforeDataErrorSendsNothing: when BeforeData fails, the message is
// not sent, the recipients fail temporarily, and the session is kept.
func TestBeforeDataErrorSendsNothing(t *testing.T) {
	sink := sinktest.Start(t, sinktest.Options{})
	p := newPool(t, smtpout.Options{Addr: sink.Addr})
	called := false
	res := p.SendHooked(context.Background(), "a@example.com", []string{"b@example.net"}, msg, smtpout.Hooks{
		BeforeData: func([]string) error { return errors.New("state store down") },
		Accepted:   func([]string) { called = true },
	})
	if res[0].Delivered() || res[0].Permanent || res[0].Status != "4.3.0" {
		t.Errorf("result %+v, want a temporary failure 4.3.0", res[0])
	}
	if called || len(sink.Transactions()) != 0 {
		t.Errorf("Accepted called: %v; the sink has %d messages; want neither", called, len(sink.Transactions()))
	}
	mustDeliver(t, p.Send(context.Background(), "a@example.com", []string{"b@example.net"}, msg), "b@example.net")
	if n := sink.Connections(); n != 1 {
		t.Errorf("%d connections, want the session kept (1)", n)
	}
}
