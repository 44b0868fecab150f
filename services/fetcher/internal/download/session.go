package download

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/fetcher/internal/pop3"
)

// SessionResult says what one session with one account did.
type SessionResult struct {
	Account    string // the account's name
	OnServer   int    // messages in the maildrop at the start
	Downloaded int    // messages published to mail.inbound and recorded in the ledger
	Bytes      int64  // their size
	Duplicates int    // messages every recipient of which had the message already: recorded, not published
	Pending    int    // messages left for the next session: a copy from another source is not published yet
	Deleted    int    // messages deleted from the server (DELE, then a successful QUIT)
	Forgotten  int    // ledger entries dropped because their UIDL left the server
	// Problems are the messages left on the server this time, each an
	// *AccountError with its UIDL (oversize, no recipient, RETR or DELE
	// refused). They do not make the session fail.
	Problems []error
}

// InboundID is the id of the mail.inbound record of message uidl of
// account: the same whenever the message is downloaded again (after a
// crash between the publish and the ledger write), so downstream
// idempotency drops the copy. The Message-ID is part of it so that a server
// that reuses a UIDL for another message does not make that message a
// "copy".
func InboundID(account, uidl, messageID string) string {
	sum := sha256.Sum256([]byte(account + "\x00" + uidl + "\x00" + messageID))
	return "pop3-" + hex.EncodeToString(sum[:16])
}

// route decides the recipients of one account's messages.
type route struct {
	single     string          // single-drop: the target user's primary address
	headers    []string        // multi-drop: envelope headers, in order
	domains    map[string]bool // multi-drop: the organisation's domains
	fallback   bool            // multi-drop: To/Cc/Bcc when the envelope headers name nobody
	postmaster string          // multi-drop: the postmaster's address ("" if none)
}

func (d *Downloader) route(ctx context.Context, a *replica.POP3Account) (*route, error) {
	switch a.Mode {
	case replica.ModeSingle, "":
		if a.TargetUser == "" {
			return nil, &AccountError{Account: a.Name, Kind: KindAccount, Err: errors.New("single-drop account without a target user")}
		}
		u, err := d.dir.User(ctx, a.TargetUser)
		if err != nil {
			return nil, &AccountError{Account: a.Name, Kind: KindState, Err: fmt.Errorf("reading target user: %w", err)}
		}
		if u == nil {
			return nil, &AccountError{Account: a.Name, Kind: KindAccount, Err: fmt.Errorf("target user %s is not in the directory replica", a.TargetUser)}
		}
		addr, ok := cleanAddress(u.PrimaryAddress)
		if !ok {
			return nil, &AccountError{Account: a.Name, Kind: KindAccount, Err: fmt.Errorf("target user %s has no usable primary address (%q)", u.Username, u.PrimaryAddress)}
		}
		return &route{single: addr}, nil
	case replica.ModeMulti:
		r := &route{headers: a.EnvelopeHeaders, domains: map[string]bool{}, fallback: a.FallbackToHeaders}
		if len(r.headers) == 0 {
			r.headers = replica.DefaultEnvelopeHeaders
		}
		for _, dom := range a.LocalDomains {
			r.domains[strings.TrimSuffix(strings.ToLower(strings.TrimSpace(dom)), ".")] = true
		}
		if len(r.domains) == 0 {
			sites, err := d.dir.Sites(ctx)
			if err != nil {
				return nil, &AccountError{Account: a.Name, Kind: KindState, Err: fmt.Errorf("reading the sites' domains: %w", err)}
			}
			for _, s := range sites {
				for _, dom := range s.Domains {
					r.domains[strings.TrimSuffix(strings.ToLower(dom), ".")] = true
				}
			}
		}
		if a.Postmaster != "" {
			u, err := d.dir.User(ctx, a.Postmaster)
			if err != nil {
				return nil, &AccountError{Account: a.Name, Kind: KindState, Err: fmt.Errorf("reading postmaster user: %w", err)}
			}
			if u != nil {
				r.postmaster, _ = cleanAddress(u.PrimaryAddress)
			}
		}
		if r.postmaster == "" {
			d.log.Warn("multi-drop account has no usable postmaster: messages without a recipient stay on the server",
				"account", a.Name, "postmaster", a.Postmaster)
		}
		return r, nil
	}
	return nil, &AccountError{Account: a.Name, Kind: KindAccount, Err: fmt.Errorf("unknown mode %q", a.Mode)}
}

// recipients returns the envelope recipients of a message, and whether they
// are the postmaster's because none could be determined.
func (r *route) recipients(h headerInfo) (rcpts []string, toPostmaster bool) {
	if r.single != "" {
		return []string{r.single}, false
	}
	inOrg := func(dom string) bool { return r.domains[dom] }
	rcpts = envelopeRecipients(h.h, r.headers, inOrg)
	if len(rcpts) == 0 && r.fallback {
		rcpts = headerRecipients(h.h, inOrg)
	}
	if len(rcpts) > 0 {
		return rcpts, false
	}
	if r.postmaster == "" {
		return nil, true
	}
	return []string{r.postmaster}, true
}

// dialOptions turns the account's settings into an address and pop3.Options.
func (d *Downloader) dialOptions(a *replica.POP3Account) (string, pop3.Options, error) {
	opts := pop3.Options{
		TLSConfig:   d.opts.TLSConfig,
		SkipVerify:  a.TLSSkipVerify,
		Fingerprint: a.TLSFingerprint,
		Timeout:     d.cfg.CommandTimeout,
		Logger:      d.log.With("account", a.Name),
	}
	port := a.Port
	switch a.TLS {
	case replica.TLSImplicit, "":
		opts.TLS = pop3.Implicit
		if port == 0 {
			port = 995
		}
	case replica.TLSStartTLS:
		opts.TLS = pop3.StartTLS
	case replica.TLSNone:
		if !a.AllowInsecure {
			return "", opts, errors.New(`tls "none" needs allow_insecure`)
		}
		opts.TLS = pop3.None
	default:
		return "", opts, fmt.Errorf("unknown tls mode %q", a.TLS)
	}
	if port == 0 {
		port = 110
	}
	if a.Host == "" {
		return "", opts, errors.New("no host")
	}
	if a.Username == "" {
		return "", opts, errors.New("no user name")
	}
	if a.Password == "" {
		return "", opts, errors.New("no password in the replica (the users service sends it only to the site that downloads the account)")
	}
	return net.JoinHostPort(a.Host, strconv.Itoa(port)), opts, nil
}

// lockAccount makes sure one account has one session at a time.
func (d *Downloader) lockAccount(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[id] {
		return false
	}
	d.busy[id] = true
	return true
}

func (d *Downloader) unlockAccount(id string) {
	d.mu.Lock()
	delete(d.busy, id)
	d.mu.Unlock()
}

// session is the state of one session.
type session struct {
	d      *Downloader
	a      *replica.POP3Account
	c      *pop3.Client
	log    *slog.Logger
	res    SessionResult
	connOK bool // the POP3 connection is still usable
}

// Session runs one POP3 session with account a now: log in, list the
// messages (UIDL), forget ledger entries whose message left the server,
// download and publish every message not in the ledger, delete the ones
// the keep policy lets go, and QUIT. A failure of the whole session is an
// *AccountError; messages left on the server for a reason of their own are
// in SessionResult.Problems.
func (d *Downloader) Session(ctx context.Context, a *replica.POP3Account) (SessionResult, error) {
	start := time.Now()
	s := &session{d: d, a: a, log: d.log.With("account", a.Name), res: SessionResult{Account: a.Name}}
	if !d.lockAccount(a.ID) {
		return s.res, &AccountError{Account: a.Name, Kind: KindAccount, Err: errors.New("a session with this account is already running")}
	}
	defer d.unlockAccount(a.ID)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.SessionTimeout)
	defer cancel()
	err := s.run(ctx)
	d.in.session.Record(context.WithoutCancel(ctx), time.Since(start).Seconds(), acctAttr(a.Name))
	mctx := context.WithoutCancel(ctx)
	if err != nil {
		var ae *AccountError
		if !errors.As(err, &ae) {
			err = &AccountError{Account: a.Name, Kind: classify(err, ""), Err: err}
			errors.As(err, &ae)
		}
		if ae.Account == "" {
			ae.Account = a.Name
		}
		if ae.Kind == KindTimeout || ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			ae.Kind = KindTimeout
		}
		if !errors.Is(err, context.Canceled) {
			d.in.fail(mctx, a.Name, ae.Kind)
		}
		s.log.Debug("pop3 session failed", "kind", ae.Kind, "error", err, "downloaded", s.res.Downloaded)
		return s.res, err
	}
	d.in.success(mctx, a.Name, d.opts.Now())
	lvl := slog.LevelDebug
	if s.res.Downloaded+s.res.Deleted+s.res.Duplicates > 0 {
		lvl = slog.LevelInfo
	}
	s.log.Log(mctx, lvl, "pop3 session done", "on_server", s.res.OnServer, "downloaded", s.res.Downloaded,
		"bytes", s.res.Bytes, "duplicates", s.res.Duplicates, "pending", s.res.Pending, "deleted", s.res.Deleted,
		"left_on_server", len(s.res.Problems), "duration", time.Since(start).Round(time.Millisecond).String())
	return s.res, nil
}

func (s *session) fail(kind string, err error) error {
	return &AccountError{Account: s.a.Name, Kind: kind, Err: err}
}

// pop3Err wraps an error of the POP3 client, noting whether the connection
// survived it (only a -ERR reply leaves it usable).
func (s *session) pop3Err(err error, fallback string) error {
	var pe *pop3.Error
	if !errors.As(err, &pe) {
		s.connOK = false
	}
	return s.fail(classify(err, fallback), err)
}

func (s *session) run(ctx context.Context) error {
	d, a := s.d, s.a
	rt, err := d.route(ctx, a)
	if err != nil {
		return err
	}
	addr, opts, err := d.dialOptions(a)
	if err != nil {
		return s.fail(KindAccount, err)
	}
	c, err := pop3.Dial(ctx, addr, opts)
	if err != nil {
		kind := classify(err, KindServer)
		if kind == KindConnection {
			kind = KindConnect
		}
		return s.fail(kind, err)
	}
	s.c, s.connOK = c, true
	defer c.Close()

	method := pop3.User
	switch {
	case a.Auth == replica.AuthAPOP:
		method = pop3.APOP
	case c.Capabilities().HasParam("SASL", "PLAIN"):
		method = pop3.Plain
	}
	if err := c.Auth(ctx, a.Username, a.Password, method); err != nil {
		var pe *pop3.Error
		if errors.As(err, &pe) {
			if pe.Temporary() {
				// [IN-USE], [LOGIN-DELAY], [SYS/TEMP]: not a wrong password.
				return s.fail(KindServer, err)
			}
			return s.fail(KindAuth, err)
		}
		return s.pop3Err(err, KindAuth)
	}

	msgs, err := c.UIDL(ctx)
	if err != nil {
		var pe *pop3.Error
		if errors.As(err, &pe) {
			return s.fail(KindUIDL, fmt.Errorf("the server refused UIDL, so messages cannot be told apart between sessions: nothing is downloaded from this account (%w)", err))
		}
		return s.pop3Err(err, KindUIDL)
	}
	s.res.OnServer = len(msgs)

	entries, err := d.opts.Ledger.List(ctx, a.ID)
	if err != nil {
		return s.fail(KindState, fmt.Errorf("reading the UIDL ledger: %w", err))
	}
	ledger := make(map[string]sitestate.LedgerEntry, len(entries))
	for _, e := range entries {
		ledger[e.UIDL] = e
	}
	onServer := make(map[string]pop3.MessageInfo, len(msgs))
	var fresh []pop3.MessageInfo
	for _, m := range msgs {
		if _, dup := onServer[m.UID]; dup {
			// Two messages with one UIDL: the server breaks RFC 1939.
			// Download the first only; the other waits until it is
			// alone.
			s.problem(m.UID, KindProtocol, fmt.Errorf("UIDL %q is used by messages %d and %d: message %d is left on the server", m.UID, onServer[m.UID].Num, m.Num, m.Num))
			continue
		}
		onServer[m.UID] = m
		if _, known := ledger[m.UID]; !known {
			fresh = append(fresh, m)
		}
	}
	for uidl := range ledger {
		if _, ok := onServer[uidl]; ok {
			continue
		}
		if err := d.opts.Ledger.Forget(ctx, a.ID, uidl); err != nil {
			return s.fail(KindState, fmt.Errorf("forgetting message %s, gone from the server: %w", uidl, err))
		}
		s.res.Forgotten++
	}

	// Messages that failed before go last, so that one bad message does
	// not hold up the others forever.
	d.mu.Lock()
	failed := d.failed[a.ID]
	for uidl := range failed {
		if _, ok := onServer[uidl]; !ok {
			delete(failed, uidl)
		}
	}
	slices.SortStableFunc(fresh, func(x, y pop3.MessageInfo) int { return cmp.Compare(failed[x.UID], failed[y.UID]) })
	d.mu.Unlock()

	dlErr := s.download(ctx, rt, fresh)
	if !s.connOK {
		return dlErr
	}
	delErr := s.deleteDelivered(ctx, ledger, onServer)
	return errors.Join(dlErr, delErr)
}

// problem records a message left on the server; the first time for a
// message and kind it is logged as a warning and counted.
func (s *session) problem(uidl, kind string, err error) {
	ae := &AccountError{Account: s.a.Name, UIDL: uidl, Kind: kind, Err: err}
	s.res.Problems = append(s.res.Problems, ae)
	key := s.a.ID + "\x00" + uidl + "\x00" + kind
	s.d.mu.Lock()
	first := !s.d.reported[key]
	s.d.reported[key] = true
	s.d.mu.Unlock()
	if first {
		s.d.in.fail(context.Background(), s.a.Name, kind)
		s.log.Warn("pop3 message left on the server", "uidl", uidl, "kind", kind, "error", err)
	} else {
		s.log.Debug("pop3 message still left on the server", "uidl", uidl, "kind", kind, "error", err)
	}
}

func (s *session) noteFailure(uidl string) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	m := s.d.failed[s.a.ID]
	if m == nil {
		m = map[string]int{}
		s.d.failed[s.a.ID] = m
	}
	m[uidl]++
}

func (s *session) clearFailure(uidl string) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	delete(s.d.failed[s.a.ID], uidl)
	for _, kind := range []string{KindOversize, KindRecipient, KindServer} {
		delete(s.d.reported, s.a.ID+"\x00"+uidl+"\x00"+kind)
	}
}

// item is a downloaded message on its way to mail.inbound.
type item struct {
	info         pop3.MessageInfo
	msg          []byte
	hdr          headerInfo
	rcpts        []string
	toPostmaster bool
}

// download retrieves the fresh messages one after the other while a
// second goroutine publishes them in batches and records them in the
// ledger, so that the broker's and the ledger's round trips overlap the
// transfer. At most about two batches are held in memory.
func (s *session) download(ctx context.Context, rt *route, fresh []pop3.MessageInfo) error {
	if len(fresh) == 0 {
		return nil
	}
	d := s.d
	maxBytes := d.opts.MaxMessageBytes
	items := make(chan *item, d.cfg.BatchMessages)
	pubDone := make(chan struct{})
	bud := newBudget(2 * d.cfg.BatchBytes)
	var (
		pubErr error
		mu     sync.Mutex // guards s.res between the two goroutines
	)
	go func() {
		defer close(pubDone)
		pubErr = s.publishLoop(ctx, items, bud, &mu)
	}()

	var retrErr error
loop:
	for _, m := range fresh {
		if ctx.Err() != nil {
			retrErr = ctx.Err()
			break
		}
		if m.Size > maxBytes {
			mu.Lock()
			s.problem(m.UID, KindOversize, fmt.Errorf("message %d is %d bytes, more than the bus carries (%d): left on the server", m.Num, m.Size, maxBytes))
			mu.Unlock()
			continue
		}
		if err := bud.acquire(ctx, m.Size, pubDone); err != nil {
			if ctx.Err() != nil {
				retrErr = ctx.Err()
			}
			break
		}
		msg, err := s.retrieve(ctx, m, maxBytes)
		if err != nil {
			bud.release(m.Size)
			s.noteFailure(m.UID)
			if errors.Is(err, pop3.ErrTooLarge) {
				mu.Lock()
				s.problem(m.UID, KindOversize, err)
				mu.Unlock()
			}
			var pe *pop3.Error
			if errors.As(err, &pe) && s.connOK {
				mu.Lock()
				s.problem(m.UID, KindServer, fmt.Errorf("RETR refused: %w", err))
				mu.Unlock()
				continue
			}
			retrErr = err
			break
		}
		it := &item{info: m, msg: msg, hdr: readHeaderInfo(msg)}
		it.rcpts, it.toPostmaster = rt.recipients(it.hdr)
		if len(it.rcpts) == 0 {
			bud.release(m.Size)
			mu.Lock()
			s.problem(m.UID, KindRecipient, errors.New("no recipient found in the envelope headers and the account has no postmaster: left on the server"))
			mu.Unlock()
			continue
		}
		select {
		case items <- it:
		case <-pubDone:
			break loop
		}
	}
	close(items)
	<-pubDone
	return errors.Join(retrErr, pubErr)
}

// retrieve downloads message m whole.
func (s *session) retrieve(ctx context.Context, m pop3.MessageInfo, maxBytes int64) ([]byte, error) {
	r, err := s.c.Retr(ctx, m.Num)
	if err != nil {
		return nil, s.pop3Err(err, KindServer)
	}
	// LIST's size is the server's count of octets, normally exact; allow
	// for a server counting LF line ends.
	buf := bytes.NewBuffer(make([]byte, 0, m.Size+m.Size/32+512))
	n, err := buf.ReadFrom(io.LimitReader(r, maxBytes+1))
	if err != nil {
		return nil, s.pop3Err(err, KindConnection)
	}
	if n > maxBytes {
		// The server's LIST size was wrong: abandon the message and the
		// connection rather than read the rest.
		s.c.Close()
		s.connOK = false
		return nil, s.fail(KindOversize, fmt.Errorf("message %d (UIDL %s) is larger than the bus carries (%d bytes), although LIST said %d: %w", m.Num, m.UID, maxBytes, m.Size, pop3.ErrTooLarge))
	}
	if err := r.Close(); err != nil {
		return nil, s.pop3Err(err, KindConnection)
	}
	return buf.Bytes(), nil
}

// publishLoop publishes the downloaded messages in batches and records
// each in the ledger once the batch was acknowledged.
func (s *session) publishLoop(ctx context.Context, items <-chan *item, bud *budget, mu *sync.Mutex) error {
	d := s.d
	for {
		it, ok := <-items
		if !ok {
			return nil
		}
		batch := []*item{it}
		size := int64(len(it.msg))
	fill:
		for len(batch) < d.cfg.BatchMessages && size < d.cfg.BatchBytes {
			select {
			case it, ok := <-items:
				if !ok {
					break fill
				}
				batch = append(batch, it)
				size += int64(len(it.msg))
			default:
				break fill
			}
		}
		err := s.publishBatch(ctx, batch, mu)
		for _, it := range batch {
			bud.release(it.info.Size)
		}
		if err != nil {
			return err
		}
	}
}

func (s *session) publishBatch(ctx context.Context, batch []*item, mu *sync.Mutex) error {
	d, a := s.d, s.a
	type out struct {
		it    *item
		rcpts []string // kept after the duplicate check
		rec   events.Inbound
	}
	var (
		pub     []out
		msgs    []msgbus.Message
		dupOnly []*item
	)
	for _, it := range batch {
		var kept []string
		wait := false
		verdicts, err := d.dup.check(ctx, a.ID, it.info.UID, it.hdr.messageID, it.rcpts)
		if err != nil {
			return s.fail(KindState, err)
		}
		for i, r := range it.rcpts {
			switch verdicts[i] {
			case keep:
				kept = append(kept, r)
			case pending:
				wait = true
			}
		}
		switch {
		case wait:
			mu.Lock()
			s.res.Pending++
			mu.Unlock()
			s.log.Debug("message held back: another copy claimed it and is not published yet", "uidl", it.info.UID, "message_id", it.hdr.messageID)
			continue
		case len(kept) == 0:
			dupOnly = append(dupOnly, it)
			continue
		}
		in := events.Inbound{
			ID:         InboundID(a.ID, it.info.UID, it.hdr.messageID),
			Site:       d.opts.Site,
			MailFrom:   it.hdr.mailFrom,
			Recipients: kept,
			Source:     events.Source{Kind: events.SourcePOP3, POP3Account: a.ID, POP3UIDL: it.info.UID},
			ReceivedAt: d.opts.Now().UTC(),
			Message:    it.msg,
		}
		rec, err := in.Encode()
		if err != nil {
			// Cannot happen with the checks above; never drop: leave it.
			mu.Lock()
			s.problem(it.info.UID, KindRecipient, fmt.Errorf("cannot encode the record: %w", err))
			mu.Unlock()
			continue
		}
		pub = append(pub, out{it: it, rcpts: kept, rec: in})
		msgs = append(msgs, msgbus.NewMessage(events.TopicInbound, rec))
	}
	if len(msgs) > 0 {
		if err := d.opts.Bus.Publish(ctx, msgs...); err != nil {
			if errors.Is(err, msgbus.ErrTooLarge) && len(msgs) == 1 {
				mu.Lock()
				s.problem(pub[0].it.info.UID, KindOversize, err)
				mu.Unlock()
				return nil
			}
			return s.fail(KindPublish, fmt.Errorf("publishing %d messages to mail.inbound: %w", len(msgs), err))
		}
	}
	// Published: record each even if a stop cancels ctx now, or the
	// statuses that already came for it (kept in memory, see
	// takeOrphans) would be lost with the process. The early statuses
	// are taken once every hand-off is recorded, with one read of the
	// site state for the batch: also those of the messages recorded
	// before a failure.
	pctx := context.WithoutCancel(ctx)
	var (
		handed []handedOff
		ferr   error
	)
	for _, p := range pub {
		it := p.it
		if d.afterPublish != nil {
			if err := d.afterPublish(ctx, a.ID, it.info.UID); err != nil {
				ferr = s.fail(KindState, err)
				break
			}
		}
		if err := d.dup.published(pctx, it.hdr.messageID, p.rcpts...); err != nil {
			ferr = s.fail(KindState, err)
			break
		}
		h := sitestate.Handoff{MessageID: it.hdr.messageID, Recipients: p.rcpts, At: p.rec.ReceivedAt}
		if _, _, err := d.opts.Ledger.RecordHandoff(pctx, a.ID, it.info.UID, h); err != nil {
			ferr = s.fail(KindState, fmt.Errorf("recording the hand-off of %s (published as %s): %w", it.info.UID, p.rec.ID, err))
			break
		}
		handed = append(handed, handedOff{uidl: it.info.UID, rcpts: p.rcpts})
	}
	if err := d.takeAllOrphans(pctx, a.ID, handed); err != nil && ferr == nil {
		ferr = s.fail(KindState, fmt.Errorf("applying early statuses: %w", err))
	}
	for _, p := range pub[:len(handed)] {
		it := p.it
		s.clearFailure(it.info.UID)
		mctx := context.WithoutCancel(ctx)
		d.in.downloaded.Add(mctx, 1, acctAttr(a.Name))
		d.in.bytes.Add(mctx, int64(len(it.msg)), acctAttr(a.Name))
		if it.toPostmaster {
			d.in.postmaster.Add(mctx, 1, acctAttr(a.Name))
			s.log.Warn("no recipient found in the envelope headers: sent to the account's postmaster",
				"uidl", it.info.UID, "message_id", it.hdr.messageID, "postmaster", p.rcpts[0], "id", p.rec.ID)
		}
		mu.Lock()
		s.res.Downloaded++
		s.res.Bytes += int64(len(it.msg))
		mu.Unlock()
	}
	if ferr != nil {
		return ferr
	}
	for _, it := range dupOnly {
		// Every recipient had it already: nothing to publish. Record it
		// as handed off and done, so that the keep policy deletes it.
		h := sitestate.Handoff{MessageID: it.hdr.messageID, Recipients: it.rcpts, At: d.opts.Now()}
		if _, _, err := d.opts.Ledger.RecordHandoff(ctx, a.ID, it.info.UID, h); err != nil {
			return s.fail(KindState, fmt.Errorf("recording duplicate %s: %w", it.info.UID, err))
		}
		if _, err := d.opts.Ledger.MarkDelivered(ctx, a.ID, it.info.UID, time.Time{}, it.rcpts...); err != nil {
			return s.fail(KindState, fmt.Errorf("recording duplicate %s: %w", it.info.UID, err))
		}
		s.clearFailure(it.info.UID)
		d.in.duplicates.Add(context.WithoutCancel(ctx), int64(len(it.rcpts)), acctAttr(a.Name))
		s.log.Info("duplicate message not published: its recipients had it already through another copy",
			"uidl", it.info.UID, "message_id", it.hdr.messageID)
		mu.Lock()
		s.res.Duplicates++
		mu.Unlock()
	}
	return nil
}

// deleteDelivered deletes the messages the keep policy lets go: DELE, then
// QUIT, and only after a successful QUIT are they marked deleted.
func (s *session) deleteDelivered(ctx context.Context, ledger map[string]sitestate.LedgerEntry, onServer map[string]pop3.MessageInfo) error {
	d, a := s.d, s.a
	var (
		nums  []int
		uidls = map[int]string{}
	)
	now := d.opts.Now()
	for uidl, e := range ledger {
		m, ok := onServer[uidl]
		if !ok || !e.AllDelivered() {
			continue
		}
		switch a.Keep.Policy {
		case replica.KeepDelete, "":
		case replica.KeepDays:
			if now.Before(e.HandedOffAt.Add(time.Duration(a.Keep.Days) * 24 * time.Hour)) {
				continue
			}
		default: // replica.KeepForever, or a policy this code does not know: keep.
			continue
		}
		nums = append(nums, m.Num)
		uidls[m.Num] = uidl
	}
	slices.Sort(nums)
	if len(nums) > 0 {
		if err := s.c.Dele(ctx, nums...); err != nil {
			var pe *pop3.Error
			if !errors.As(err, &pe) {
				return s.pop3Err(err, KindServer)
			}
			// Some were refused: they stay, the others go.
			for _, e := range unwrapAll(err) {
				if errors.As(e, &pe) {
					f := strings.Fields(pe.Command)
					if len(f) == 2 {
						if n, err := strconv.Atoi(f[1]); err == nil {
							s.problem(uidls[n], KindServer, fmt.Errorf("DELE refused: %w", e))
							nums = slices.DeleteFunc(nums, func(x int) bool { return x == n })
						}
					}
				}
			}
		}
	}
	if d.beforeQuit != nil {
		if err := d.beforeQuit(ctx, a.ID); err != nil {
			s.c.Close()
			return s.fail(KindConnection, err)
		}
	}
	if err := s.c.Quit(ctx); err != nil {
		// The server may have removed none of them: the next session
		// sees which are still there.
		return s.pop3Err(err, KindServer)
	}
	s.connOK = false
	for _, n := range nums {
		if _, err := d.opts.Ledger.MarkDeleted(ctx, a.ID, uidls[n], now); err != nil && !errors.Is(err, sitestate.ErrNotFound) {
			return s.fail(KindState, fmt.Errorf("recording the deletion of %s: %w", uidls[n], err))
		}
	}
	s.res.Deleted = len(nums)
	if len(nums) > 0 {
		d.in.deleted.Add(context.WithoutCancel(ctx), int64(len(nums)), acctAttr(a.Name))
	}
	return nil
}

func unwrapAll(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// budget bounds the bytes of downloaded messages not yet published.
type budget struct {
	mu    sync.Mutex
	used  int64
	limit int64
	freed chan struct{}
}

func newBudget(limit int64) *budget {
	return &budget{limit: limit, freed: make(chan struct{}, 1)}
}

// acquire waits until n bytes fit (a message larger than the limit fits
// when nothing else is held). It fails when ctx ends or stop is closed.
func (b *budget) acquire(ctx context.Context, n int64, stop <-chan struct{}) error {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+n <= b.limit {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		b.mu.Unlock()
		select {
		case <-b.freed:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return errors.New("publisher stopped")
		}
	}
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	select {
	case b.freed <- struct{}{}:
	default:
	}
}
