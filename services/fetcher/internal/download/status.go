package download

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

// Orphan statuses: a status can overtake the ledger write it refers to (the
// router and the relay may be done with a message before the downloader
// has recorded its hand-off). Such a status is kept for a while and applied
// right after the hand-off is recorded: in memory, and as a key in the site
// state (orphanMarkKey), because the status is committed once kept — a
// fetcher that dies before the hand-off is recorded takes its memory with
// it, and the next one downloads the message again under the same id,
// which downstream drops as a redelivery, so no new status comes.
const (
	orphanTTL = time.Hour
	maxOrphan = 100_000
)

type orphan struct {
	recipients []string
	at         time.Time // the outcome's time
	seen       time.Time // when it was kept
}

// StatusGroup is the consumer group the status consumer uses.
func (d *Downloader) StatusGroup() string {
	if d.cfg.StatusGroup != "" {
		return d.cfg.StatusGroup
	}
	if d.opts.Site == "" {
		return "fetcher-status"
	}
	return d.opts.Site + "-fetcher-status"
}

// RunStatus consumes mail.status until ctx is cancelled: every final
// outcome (delivered, bounced, rejected) of a recipient of a message
// downloaded from a POP3 account is marked in the UIDL ledger, so that the
// message can be deleted from the server at the account's next session.
// Deferred outcomes are not final and are ignored.
func (d *Downloader) RunStatus(ctx context.Context) error {
	return d.opts.Bus.Consume(ctx, msgbus.Subscription{
		Group:   d.StatusGroup(),
		Topic:   events.TopicStatus,
		Name:    "fetcher-status",
		Handler: d.handleStatus,
	})
}

func (d *Downloader) handleStatus(ctx context.Context, rec msgbus.Record) ([]msgbus.Message, error) {
	st, err := events.DecodeStatus(rec.Event())
	if err != nil {
		return nil, msgbus.Permanent(fmt.Errorf("fetcher status consumer: %w", err))
	}
	src := st.Source
	if src.Kind != events.SourcePOP3 || src.POP3Account == "" || src.POP3UIDL == "" {
		return nil, nil
	}
	switch st.Outcome {
	case events.OutcomeDelivered, events.OutcomeBounced, events.OutcomeRejected:
	default:
		return nil, nil
	}
	rcpt := strings.ToLower(strings.TrimSpace(st.Recipient))
	if rcpt == "" {
		return nil, nil
	}
	// The envelope recipient the outcome answers for (OriginalRecipient),
	// and the mailbox it reached: the router delivers to each mailbox
	// once, so other envelope recipients that expand to the same mailbox
	// (an alias, a group holding that user) get no status of their own and
	// are marked through the replica (markUnmatched).
	rcpts := []string{rcpt}
	if orig := strings.ToLower(strings.TrimSpace(st.OriginalRecipient)); orig != "" && orig != rcpt {
		rcpts = []string{orig, rcpt}
	}
	if err := d.markDelivered(ctx, src.POP3Account, src.POP3UIDL, st.At, rcpts...); err != nil {
		return nil, fmt.Errorf("marking %s of pop3 message %s delivered: %w", rcpt, src.POP3UIDL, err)
	}
	return nil, nil
}

// markExpanded handles a status whose recipient is not one the message
// was published for: the router expanded an envelope recipient (an alias,
// a group, a shared mailbox) into mailboxes, and the relay reports the
// mailbox. The envelope recipients it came from are marked: the first
// final outcome of any of their mailboxes counts, since by then the
// message is safe in the pipeline (the others are being retried from
// mail.delivery), not only on the POP3 server.
func (d *Downloader) markExpanded(ctx context.Context, e sitestate.LedgerEntry, at time.Time, final string) error {
	var from []string
	for _, orig := range e.Pending() {
		ok, err := d.expandsTo(ctx, orig, final)
		if err != nil {
			return err
		}
		if ok {
			from = append(from, orig)
		}
	}
	if len(from) == 0 {
		d.log.Debug("status for a recipient the pop3 message was not published for", "account_id", e.Account, "uidl", e.UIDL, "recipient", final)
		return nil
	}
	_, err := d.opts.Ledger.MarkDelivered(ctx, e.Account, e.UIDL, at, from...)
	return err
}

// maxGroupDepth bounds the expansion of nested groups.
const maxGroupDepth = 10

// expandsTo reports whether envelope recipient orig reaches mailbox
// address final: the same user (an alias), a member of the group orig
// (nested groups included), or the manager or a staff member of the shared
// mailbox orig.
func (d *Downloader) expandsTo(ctx context.Context, orig, final string) (bool, error) {
	fu, err := d.dir.UserByKey(ctx, final)
	if err != nil || fu == nil {
		return false, err
	}
	if ou, err := d.dir.UserByKey(ctx, orig); err != nil || ou != nil {
		return ou != nil && ou.ID == fu.ID, err
	}
	if sm, err := d.dir.SharedMailboxByAddress(ctx, orig); err != nil || sm != nil {
		return sm != nil && (sm.Manager == fu.ID || sm.HasStaff(fu.ID)), err
	}
	g, err := d.dir.GroupByKey(ctx, orig)
	if err != nil || g == nil {
		return false, err
	}
	return d.groupHas(ctx, g, fu.ID, 0, map[string]bool{})
}

func (d *Downloader) groupHas(ctx context.Context, g *replica.Group, userID string, depth int, seen map[string]bool) (bool, error) {
	if depth > maxGroupDepth || seen[g.ID] {
		return false, nil
	}
	seen[g.ID] = true
	for _, m := range g.Members {
		switch m.Type {
		case replica.MemberUser:
			if m.ID == userID {
				return true, nil
			}
		case replica.MemberGroup:
			sub, err := d.dir.Group(ctx, m.ID)
			if err != nil {
				return false, err
			}
			if sub != nil {
				if ok, err := d.groupHas(ctx, sub, userID, depth+1, seen); err != nil || ok {
					return ok, err
				}
			}
		}
	}
	return false, nil
}

// markDelivered marks rcpt's outcome in the ledger, or keeps it as an
// orphan if the hand-off is not recorded yet.
func (d *Downloader) markDelivered(ctx context.Context, account, uidl string, at time.Time, rcpts ...string) error {
	e, err := d.opts.Ledger.MarkDelivered(ctx, account, uidl, at, rcpts...)
	if errors.Is(err, sitestate.ErrNotFound) {
		// Keep it first, then look again: either this second look sees
		// the entry, or the downloader (which records, then takes the
		// orphans) finds the orphan.
		d.keepOrphan(account, uidl, at, rcpts)
		if err := d.markOrphan(ctx, account, uidl, rcpts); err != nil {
			return err
		}
		e, err = d.opts.Ledger.MarkDelivered(ctx, account, uidl, at, rcpts...)
		if errors.Is(err, sitestate.ErrNotFound) {
			d.log.Debug("status for a pop3 message not in the ledger (yet)", "account_id", account, "uidl", uidl)
			return nil
		}
	}
	if err != nil {
		return err
	}
	return d.markUnmatched(ctx, e, at, rcpts)
}

// markUnmatched marks, through markExpanded, the pending recipients that
// reach the mailboxes of rcpts: those the router merged into a delivery
// reported under another address.
func (d *Downloader) markUnmatched(ctx context.Context, e sitestate.LedgerEntry, at time.Time, rcpts []string) error {
	for _, r := range rcpts {
		if len(e.Pending()) == 0 {
			return nil
		}
		if err := d.markExpanded(ctx, e, at, r); err != nil {
			return err
		}
	}
	return nil
}

func orphanKey(account, uidl string) string { return account + "\x00" + uidl }

// orphanMarkKey is the site-state key of an early final status of
// recipient rcpt of (account, uidl); it lives orphanTTL.
func orphanMarkKey(account, uidl, rcpt string) string {
	return "fetch-early:" + srcHash(account, uidl) + ":" + strings.ToLower(rcpt)
}

// markOrphan keeps an early status in the site state (when the downloader
// has one), before the status is committed.
func (d *Downloader) markOrphan(ctx context.Context, account, uidl string, rcpts []string) error {
	if d.opts.Idempotency == nil || len(rcpts) == 0 {
		return nil
	}
	keys := make([]string, len(rcpts))
	for i, r := range rcpts {
		keys[i] = orphanMarkKey(account, uidl, r)
	}
	if _, err := d.opts.Idempotency.ClaimAll(ctx, keys, orphanTTL); err != nil {
		return fmt.Errorf("keeping an early status of pop3 message %s: %w", uidl, err)
	}
	return nil
}

func (d *Downloader) keepOrphan(account, uidl string, at time.Time, rcpts []string) {
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.orphans) >= maxOrphan {
		for k, o := range d.orphans {
			if now.Sub(o.seen) > orphanTTL {
				delete(d.orphans, k)
			}
		}
		if len(d.orphans) >= maxOrphan {
			return
		}
	}
	k := orphanKey(account, uidl)
	o := d.orphans[k]
	if o == nil {
		o = &orphan{at: at}
		d.orphans[k] = o
	}
	o.seen = now
	for _, r := range rcpts {
		if !contains(o.recipients, r) {
			o.recipients = append(o.recipients, r)
		}
	}
}

// handedOff is a message whose hand-off was just recorded, with the
// recipients it was published for.
type handedOff struct {
	uidl  string
	rcpts []string
}

// takeOrphans is takeAllOrphans for one message.
func (d *Downloader) takeOrphans(ctx context.Context, account, uidl string, rcpts []string) error {
	return d.takeAllOrphans(ctx, account, []handedOff{{uidl: uidl, rcpts: rcpts}})
}

// takeAllOrphans applies the statuses that arrived before the hand-offs
// of account's messages hs were recorded: those kept in memory, and those
// kept in the site state by this or an earlier fetcher process, read in
// one round trip for all of hs. It must run after the hand-offs are
// recorded (a status that came later found the ledger entry). A failure
// leaves the others applied.
func (d *Downloader) takeAllOrphans(ctx context.Context, account string, hs []handedOff) error {
	if len(hs) == 0 {
		return nil
	}
	type found struct {
		early []string
		at    time.Time
	}
	fs := make([]found, len(hs))
	d.mu.Lock()
	for i, h := range hs {
		k := orphanKey(account, h.uidl)
		if o := d.orphans[k]; o != nil && time.Since(o.seen) <= orphanTTL {
			fs[i] = found{early: o.recipients, at: o.at}
		}
		delete(d.orphans, k)
	}
	d.mu.Unlock()
	var errs []error
	if d.opts.Idempotency != nil {
		var keys []string
		for _, h := range hs {
			for _, r := range h.rcpts {
				keys = append(keys, orphanMarkKey(account, h.uidl, r))
			}
		}
		seen, err := d.opts.Idempotency.SeenAll(ctx, keys)
		if err != nil {
			// Those kept in memory are applied all the same.
			errs = append(errs, err)
			seen = nil
		}
		n := 0
		for i, h := range hs {
			for _, r := range h.rcpts {
				if n < len(seen) && seen[n] && !contains(fs[i].early, strings.ToLower(r)) {
					fs[i].early = append(fs[i].early, strings.ToLower(r))
				}
				n++
			}
			if seen != nil && len(h.rcpts) > 0 && fs[i].at.IsZero() {
				fs[i].at = d.opts.Now() // kept by a process that is gone: the time is not known
			}
		}
	}
	for i, h := range hs {
		f := fs[i]
		if len(f.early) == 0 {
			continue
		}
		e, err := d.opts.Ledger.MarkDelivered(ctx, account, h.uidl, f.at, f.early...)
		if err == nil {
			err = d.markUnmatched(ctx, e, f.at, f.early)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.uidl, err))
		}
	}
	return errors.Join(errs...)
}
