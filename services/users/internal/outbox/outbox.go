// Package outbox publishes the users service's change log to the Kafka
// topic directory.changes, in order and at least once: a change is
// published (acks=all) before the outbox position moves past it, and the
// position is stored in the directory's own database, so a restart resumes
// where the last acknowledged change left off.
package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/syncfeed"
)

// Name is the outbox's position name in the store.
const Name = "directory.changes"

// Log is what the outbox reads from the store.
type Log interface {
	ChangesSince(ctx context.Context, seq int64, limit int) ([]directory.Change, error)
	OutboxPosition(ctx context.Context, name string) (int64, error)
	SetOutboxPosition(ctx context.Context, name string, seq int64) error
}

// Publisher is the bus.
type Publisher interface {
	Publish(ctx context.Context, msgs ...msgbus.Message) error
}

// Outbox moves changes from the log to the topic.
type Outbox struct {
	Log       Log
	Bus       Publisher
	Logger    *slog.Logger
	Wake      <-chan struct{} // signalled after a write commits (optional)
	Poll      time.Duration   // look for changes at least this often (default 2s)
	BatchSize int             // changes per publish (default 100)
}

// Run publishes until ctx is cancelled. Errors (broker or database down) are
// logged and retried with backoff; nothing is skipped.
func (o *Outbox) Run(ctx context.Context) error {
	poll := o.Poll
	if poll <= 0 {
		poll = 2 * time.Second
	}
	failures := 0
	for {
		n, err := o.Flush(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := poll
		switch {
		case err != nil:
			failures++
			wait = min(time.Duration(1<<min(failures, 5))*200*time.Millisecond, 30*time.Second)
			o.Logger.Warn("publishing directory changes failed; retrying", "error", err, "retry_in", wait)
		case n > 0:
			failures = 0
			continue // more may be waiting
		default:
			failures = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-o.Wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// Flush publishes one batch of unpublished changes and returns how many.
func (o *Outbox) Flush(ctx context.Context) (int, error) {
	batch := o.BatchSize
	if batch <= 0 {
		batch = 100
	}
	pos, err := o.Log.OutboxPosition(ctx, Name)
	if err != nil {
		return 0, fmt.Errorf("outbox position: %w", err)
	}
	changes, err := o.Log.ChangesSince(ctx, pos, batch)
	if err != nil {
		return 0, fmt.Errorf("reading changes after %d: %w", pos, err)
	}
	if len(changes) == 0 {
		return 0, nil
	}
	msgs := make([]msgbus.Message, 0, len(changes))
	for _, c := range changes {
		pub, ok, err := syncfeed.View{}.Project(c)
		if err != nil {
			return 0, err
		}
		if !ok {
			continue
		}
		ev := events.DirectoryChange{Seq: c.Seq, At: c.At, Kind: c.Kind, ID: c.ID, Op: pub.Op, Data: pub.Data}
		rec, err := ev.Encode()
		if err != nil {
			return 0, fmt.Errorf("change %d: %w", c.Seq, err)
		}
		msgs = append(msgs, msgbus.NewMessage(events.TopicDirectoryChanges, rec))
	}
	if len(msgs) > 0 {
		if err := o.Bus.Publish(ctx, msgs...); err != nil {
			return 0, err
		}
	}
	last := changes[len(changes)-1].Seq
	if err := o.Log.SetOutboxPosition(ctx, Name, last); err != nil {
		// Published but not recorded: the batch is published again
		// after a restart (at least once, as documented).
		return 0, fmt.Errorf("outbox position %d: %w", last, err)
	}
	return len(changes), nil
}
