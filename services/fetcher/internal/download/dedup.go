package download

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/postern/postern/internal/sitestate"
)

// Duplicate suppression: the same Message-ID for the same recipient, seen
// again within the window through any account (or twice in one multi-drop
// mailbox), is published once.
//
// The decision for one (account, UIDL, Message-ID, recipient) must come out
// the same when the message is handled again after a failed publish or a
// crash, or the retry would drop a recipient the first attempt won (a loss);
// and a copy must not be dropped before the copy that won was published, or
// a winner that never publishes (its account removed) would lose the mail.
// Idempotency keys carry no value, so five keys per recipient do it (<src>
// is a hash of account and UIDL, <m> is "<msgid>:<rcpt>"):
//
//	T  fetch-dup-try:<src>:<m>      this source tried (set first)
//	K  fetch-dup:<m>                the claim: one source wins
//	W  fetch-dup-pub:<m>            the winner's copy was published (set after the publish)
//	L  fetch-dup-lost:<src>:<m>     this source lost to a published copy
//	P  fetch-dup-wait:<src>:<m>     this source lost the claim, the winner has not published yet
//
// A first attempt (T newly set) claims K: won; or lost for sure, since no
// earlier attempt of ours can have set K — then dropped if W is set (L
// records it) or else left pending (P) and tried again at the next session.
// A later attempt keeps a recorded loss (L); a pending one looks again (and
// wins once the other claim has expired unpublished); with neither it wins:
// it won before, or stopped between two steps and cannot tell, so a
// duplicate is possible and a loss is not. Every key lives for the window.
type dedup struct {
	idem   sitestate.Idempotency
	window time.Duration
}

// verdict of a duplicate check for one recipient.
type verdict int

const (
	keep    verdict = iota // publish for this recipient
	drop                   // a copy for this recipient was published already
	pending                // another copy claimed it but is not published yet: try later
)

// srcHash names one message of one account in dedup keys.
func srcHash(account, uidl string) string {
	sum := sha256.Sum256([]byte(account + "\x00" + uidl))
	return hex.EncodeToString(sum[:12])
}

func (d *dedup) enabled(msgid string) bool {
	return d != nil && d.window > 0 && msgid != ""
}

// check decides, for each of rcpts, whether it keeps message msgid from
// (account, uidl). A first attempt claims the message's keys for all its
// recipients in one atomic ClaimAll, so that two copies of one message
// with the same recipients cannot each win part of them and both wait for
// the other.
func (d *dedup) check(ctx context.Context, account, uidl, msgid string, rcpts []string) ([]verdict, error) {
	out := make([]verdict, len(rcpts))
	if !d.enabled(msgid) || len(rcpts) == 0 {
		return out, nil // keep
	}
	fail := func(err error) ([]verdict, error) { return nil, fmt.Errorf("duplicate check: %w", err) }
	src := srcHash(account, uidl)
	ms := make([]string, len(rcpts))
	tries := make([]string, len(rcpts))
	for i, r := range rcpts {
		ms[i] = msgid + ":" + r
		tries[i] = "fetch-dup-try:" + src + ":" + ms[i]
	}
	first, err := d.idem.ClaimAll(ctx, tries, d.window)
	if err != nil {
		return fail(err)
	}
	var claims []string
	var idx []int
	for i := range rcpts {
		if first[i] {
			claims, idx = append(claims, "fetch-dup:"+ms[i]), append(idx, i)
		} else if out[i], err = d.retry(ctx, src, ms[i]); err != nil {
			return fail(err)
		}
	}
	if len(claims) == 0 {
		return out, nil
	}
	won, err := d.idem.ClaimAll(ctx, claims, d.window)
	if err != nil {
		return fail(err)
	}
	for k, i := range idx {
		if !won[k] {
			if out[i], err = d.lostClaim(ctx, src, ms[i]); err != nil {
				return fail(err)
			}
		}
	}
	return out, nil
}

// retry decides for a recipient this source tried before (T was set).
func (d *dedup) retry(ctx context.Context, src, m string) (verdict, error) {
	idem := d.idem
	if lost, err := idem.Seen(ctx, "fetch-dup-lost:"+src+":"+m); err != nil || lost {
		return drop, err
	}
	waiting, err := idem.Seen(ctx, "fetch-dup-wait:"+src+":"+m)
	if err != nil {
		return keep, err
	}
	won, err := idem.Claim(ctx, "fetch-dup:"+m, d.window)
	if err != nil || won || !waiting {
		// Won now, or won before (or cannot tell): keep.
		return keep, err
	}
	return d.lostClaim(ctx, src, m)
}

// lostClaim: another source holds the claim. Drop if its copy was
// published, else wait for it.
func (d *dedup) lostClaim(ctx context.Context, src, m string) (verdict, error) {
	published, err := d.idem.Seen(ctx, "fetch-dup-pub:"+m)
	if err != nil {
		return keep, err
	}
	if published {
		_, err := d.idem.Claim(ctx, "fetch-dup-lost:"+src+":"+m, d.window)
		return drop, err
	}
	_, err = d.idem.Claim(ctx, "fetch-dup-wait:"+src+":"+m, d.window)
	return pending, err
}

// published records that the copies for rcpts were published, so that the
// copies waiting for them are dropped: one ClaimAll for all of them.
func (d *dedup) published(ctx context.Context, msgid string, rcpts ...string) error {
	if !d.enabled(msgid) || len(rcpts) == 0 {
		return nil
	}
	keys := make([]string, len(rcpts))
	for i, r := range rcpts {
		keys[i] = "fetch-dup-pub:" + msgid + ":" + r
	}
	if _, err := d.idem.ClaimAll(ctx, keys, d.window); err != nil {
		return fmt.Errorf("duplicate check: recording the publish: %w", err)
	}
	return nil
}
