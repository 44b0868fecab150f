package download

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
)

// TestStatusBeforeHandoffSurvivesAKill: the router and the relay are done
// with a message before the fetcher recorded its hand-off, the fetcher's
// status consumer takes that status (and commits it), and then the fetcher
// dies before the hand-off is recorded. The next fetcher downloads the
// message again (the same id, which downstream drops: no new status comes)
// and records it; the early status must still count, or the message is
// never deleted from the server.
func TestStatusBeforeHandoffSurvivesAKill(t *testing.T) {
	e, s, a, _ := fakeSetup(t, 2)
	cfg := testConfig()
	cfg.BatchMessages = 1
	dl1 := e.downloader(cfg, nil)
	ctx1, stop1 := context.WithCancel(context.Background())
	done1 := make(chan error, 1)
	go func() { done1 <- dl1.RunStatus(ctx1) }()
	dl1.afterPublish = func(_ context.Context, _, uidl string) error {
		if uidl != "uid-2" {
			return nil
		}
		var ins []events.Inbound
		for _, in := range e.inbound(2) {
			if in.Source.POP3UIDL == "uid-2" {
				ins = append(ins, in)
			}
		}
		e.deliverAll(ins, events.OutcomeDelivered)
		deadline := time.Now().Add(30 * time.Second)
		for {
			dl1.mu.Lock()
			n := len(dl1.orphans)
			dl1.mu.Unlock()
			if n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the status of uid-2 did not reach the first fetcher's status consumer")
			}
			time.Sleep(10 * time.Millisecond)
		}
		stop1() // the process dies, its status consumer with it
		if err := <-done1; err != nil {
			t.Errorf("status consumer: %v", err)
		}
		return errors.New("killed")
	}
	if _, err := dl1.Session(t.Context(), &a); err == nil {
		t.Fatal("first session: not killed")
	}

	dl2 := e.downloader(testConfig(), nil)
	runStatus(t, dl2)
	_, err := dl2.Session(t.Context(), &a)
	mustNoErr(t, "session after the restart", err)
	var uid1 []events.Inbound
	for _, in := range e.inbound(3) {
		if in.Source.POP3UIDL == "uid-1" {
			uid1 = append(uid1, in)
		}
	}
	e.deliverAll(uid1, events.OutcomeDelivered)
	e.waitDelivered(a.ID, "uid-1", "uid-2")
	res, err := dl2.Session(t.Context(), &a)
	mustNoErr(t, "session after delivery", err)
	if res.Deleted != 2 || len(s.uids()) != 0 {
		t.Errorf("deleted %d, server holds %q; want both deleted", res.Deleted, s.uids())
	}
}
