package download

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/fetcher/internal/pop3"
)

// earlyReads counts the reads of early-status keys (fetch-early:).
type earlyReads struct {
	sitestate.Idempotency
	n atomic.Int32
}

func (r *earlyReads) SeenAll(ctx context.Context, keys []string) ([]bool, error) {
	for _, k := range keys {
		if strings.HasPrefix(k, "fetch-early:") {
			r.n.Add(1)
			break
		}
	}
	return r.Idempotency.SeenAll(ctx, keys)
}

// TestPublishBatchReadsEarlyStatusesOnce: the early statuses of a batch's
// messages are read from the site state in one round trip, not one per
// message, and each is applied to its own message.
func TestPublishBatchReadsEarlyStatusesOnce(t *testing.T) {
	e := newEnv(t)
	e.user("u-alice", "alice", "alice@example.com")
	e.user("u-bob", "bob", "bob@example.com")
	reads := &earlyReads{Idempotency: e.store.Idempotency()}
	dl := e.downloader(testConfig(), func(o *Options) { o.Idempotency = reads })
	ctx := t.Context()
	const account = "a-batch"
	// Statuses kept by a fetcher that died before recording the
	// hand-offs: alice's of uid-2, both of uid-4.
	mustNoErr(t, "early status", dl.markOrphan(ctx, account, "uid-2", []string{"alice@example.com"}))
	mustNoErr(t, "early status", dl.markOrphan(ctx, account, "uid-4", []string{"alice@example.com", "bob@example.com"}))

	var batch []*item
	for i := 1; i <= 5; i++ {
		msg := genMessage(uint64(i), 500, "")
		batch = append(batch, &item{
			info:  pop3.MessageInfo{Num: i, Size: int64(len(msg)), UID: fmt.Sprintf("uid-%d", i)},
			msg:   msg,
			hdr:   headerInfo{messageID: fmt.Sprintf("<%d@example.net>", i), mailFrom: "sender@example.net"},
			rcpts: []string{"alice@example.com", "bob@example.com"},
		})
	}
	a := fakeAccount(newFakePOP3(t, "u", "p"), account, "batch", "u-alice")
	s := &session{d: dl, a: &a, log: dl.log, res: SessionResult{Account: a.Name}}
	mustNoErr(t, "publishBatch", s.publishBatch(ctx, batch, &sync.Mutex{}))
	if s.res.Downloaded != 5 {
		t.Errorf("downloaded %d, want 5", s.res.Downloaded)
	}
	if n := reads.n.Load(); n != 1 {
		t.Errorf("early statuses read %d times for one batch, want once", n)
	}
	for uidl, pending := range map[string][]string{
		"uid-1": {"alice@example.com", "bob@example.com"},
		"uid-2": {"bob@example.com"},
		"uid-3": {"alice@example.com", "bob@example.com"},
		"uid-4": nil,
		"uid-5": {"alice@example.com", "bob@example.com"},
	} {
		le, err := e.store.Ledger().Get(ctx, account, uidl)
		mustNoErr(t, "ledger "+uidl, err)
		if got := le.Pending(); fmt.Sprint(got) != fmt.Sprint(pending) {
			t.Errorf("%s pending %q, want %q", uidl, got, pending)
		}
	}
}
