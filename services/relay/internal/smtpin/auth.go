package smtpin

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/postern/postern/internal/passwd"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
)

var (
	errAuthFailed    = reply(535, 5, 7, 8, "Authentication credentials invalid")
	errAuthLocked    = reply(454, 4, 7, 0, "Too many failed authentication attempts, try again later")
	errAuthMalformed = reply(501, 5, 5, 2, "Malformed authentication exchange")
	errAuthTemporary = reply(454, 4, 7, 0, "Temporary authentication failure")
)

// maxLoginLen bounds a login name (an address is at most 320 bytes).
const maxLoginLen = 320

// AuthMechanisms are PLAIN and LOGIN on submission (go-smtp advertises them
// only over TLS), none elsewhere.
func (s *session) AuthMechanisms() []string {
	if s.kind != kindSubmission {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth starts an AUTH exchange. go-smtp refuses AUTH before TLS itself
// (523 5.7.10), before asking.
func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.kind != kindSubmission {
		return nil, smtp.ErrAuthUnsupported
	}
	if !s.tls { // not reached while go-smtp's AllowInsecureAuth is false
		return nil, s.reject("tls_required", errNeedTLS)
	}
	switch mech {
	case sasl.Plain:
		return guard{sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return s.login(username, "", true)
			}
			return s.login(username, password, false)
		})}, nil
	case sasl.Login:
		return guard{&loginServer{auth: func(username, password string) error { return s.login(username, password, false) }}}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// login checks a user name (or primary address) and password against the
// replica, under the lockout. A refusal is an *smtp.SMTPError.
func (s *session) login(name, password string, forceFail bool) error {
	ctx, cancel := s.ctx()
	defer cancel()
	key := strings.ToLower(strings.TrimSpace(name))
	if key == "" || len(key) > maxLoginLen || strings.ContainsAny(key, "\x00\r\n") {
		s.srv.inst.authFailed(s.listener)
		return errAuthFailed
	}
	var u *replica.User
	if !forceFail {
		found, err := s.srv.dir.UserByKey(ctx, key)
		if err != nil {
			s.log.Error("smtp auth: user lookup", "error", err)
			return errAuthTemporary
		}
		// By user name or primary address only, not an alias.
		if found != nil && (strings.ToLower(found.Username) == key || strings.ToLower(found.PrimaryAddress) == key) {
			u = found
		}
	}
	userKey := "smtp-auth:user:" + key
	if u != nil {
		userKey = "smtp-auth:user:" + u.ID
	}
	ipKey := ""
	if s.ip.IsValid() {
		ipKey = "smtp-auth:ip:" + s.ip.String()
	}
	lock := s.srv.cfg.AuthLockout
	if lock.MaxFailuresPerIP <= 0 {
		ipKey = ""
	}
	// Failures this process could not count are counted first: until
	// they are, the attempts they concern are refused (fail closed).
	if lock.MaxFailuresPerUser > 0 || ipKey != "" {
		if err := s.srv.authTurns.settleSome(ctx, s.srv.limits); err != nil {
			s.log.Error("smtp auth: failures not counted yet", "error", err)
			return errAuthTemporary
		}
	}
	if ipKey != "" {
		if err := s.srv.authTurns.settle(ctx, s.srv.limits, ipKey); err != nil {
			s.log.Error("smtp auth: counting an earlier failure", "error", err)
			return errAuthTemporary
		}
	}
	locked, err := s.locked(ctx, ipKey)
	if err != nil {
		s.log.Error("smtp auth: lockout state", "error", err)
		return errAuthTemporary
	}
	if !locked && lock.MaxFailuresPerUser > 0 {
		// The attempts for one user take turns in this process, each
		// reading the failure count and, when it fails, adding to it
		// before the next one is checked: logins started in parallel
		// cannot each get a guess verified before the first failure is
		// recorded, and a user's own parallel logins with the right
		// password (a mail client opening several sessions) are not
		// taken for guesses. (Counting every attempt before the check
		// did that too, but locked out a user who opened more sessions
		// at once than the failure limit.) Relays sharing the site state
		// may each verify one guess beyond the limit at the same moment.
		// A failure whose count the site state did not take is owed to
		// the key in this process, and counted here before the next
		// attempt is checked: while that fails, the user's attempts are
		// refused unchecked.
		release, err := s.srv.authTurns.wait(ctx, userKey)
		if err != nil {
			return errAuthTemporary
		}
		defer release()
		if err := s.srv.authTurns.settle(ctx, s.srv.limits, userKey); err != nil {
			s.log.Error("smtp auth: counting an earlier failure", "error", err)
			return errAuthTemporary
		}
		n, _, err := s.srv.limits.Count(ctx, userKey)
		if err != nil {
			s.log.Error("smtp auth: reading the failure count", "error", err)
			return errAuthTemporary
		}
		locked = n >= int64(lock.MaxFailuresPerUser)
	}
	if locked {
		s.srv.inst.authFailed(s.listener)
		s.srv.inst.rejected(s.listener, "auth_locked")
		s.log.Warn("smtp auth refused: locked out", "login", key)
		return errAuthLocked
	}
	ok := false
	if u != nil && u.Enabled && u.PasswordHash != "" {
		ok, err = s.srv.verify(ctx, u.PasswordHash, password)
		if err != nil && ctx.Err() == nil {
			// A hash the directory should not have sent: this user
			// cannot log in; logged, not told.
			s.log.Error("smtp auth: password hash of user is unusable", "user", u.ID, "error", err)
			ok = false
		} else if err != nil {
			return errAuthTemporary
		}
	} else if !forceFail {
		// Spend the time a verification takes, so that unknown and
		// disabled users are not told apart by timing.
		_, _ = s.srv.verify(ctx, s.srv.dummy(), password)
	}
	// The count is written on a context of its own: the command's may be
	// nearly spent after the wait for the user's turn and the password
	// check, and a failure that is not counted is a free guess.
	wctx, wcancel := context.WithTimeout(context.WithoutCancel(ctx), countTimeout)
	defer wcancel()
	if ok {
		if lock.MaxFailuresPerUser > 0 {
			if err := s.srv.limits.Reset(wctx, userKey); err != nil {
				s.log.Warn("smtp auth: clearing the failure count", "error", err)
			}
		}
		s.user = u
		s.log = s.log.With("user", u.ID)
		s.log.Info("smtp auth succeeded", "login", key)
		return nil
	}
	s.srv.inst.authFailed(s.listener)
	s.log.Info("smtp auth failed", "login", key)
	counted := true
	for _, k := range []string{userKey, ipKey} {
		if k == "" || k == userKey && lock.MaxFailuresPerUser <= 0 {
			continue
		}
		if _, _, err := s.srv.limits.Hit(wctx, k, lock.Window); err != nil {
			// Fail closed: owed, and counted before the next attempt
			// on k is checked; this one gets the temporary failure.
			s.log.Error("smtp auth: counting the failure; attempts for this key are refused until it is counted", "error", err)
			s.srv.authTurns.owe(k, lock.Window)
			counted = false
		}
	}
	if !counted {
		return errAuthTemporary
	}
	return errAuthFailed
}

// countTimeout bounds counting a failed attempt (and clearing the count
// after a success), on a context detached from the command's.
const countTimeout = 5 * time.Second

// locked reports whether the client address has reached its failure limit
// in the current window (the user's count is read in login, in the user's
// turn; both are charged per failed attempt, after the password check).
func (s *session) locked(ctx context.Context, ipKey string) (bool, error) {
	lock := s.srv.cfg.AuthLockout
	if n := lock.MaxFailuresPerIP; n > 0 && ipKey != "" {
		c, _, err := s.srv.limits.Count(ctx, ipKey)
		if err != nil {
			return false, err
		}
		if c >= int64(n) {
			return true, nil
		}
	}
	return false, nil
}

// verify checks pw against hash, at most GOMAXPROCS at a time (argon2id
// needs 64 MiB per check).
func (s *Server) verify(ctx context.Context, hash, pw string) (bool, error) {
	select {
	case s.verifySem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-s.verifySem }()
	return passwd.Verify(hash, pw)
}

// dummy returns a hash no password matches in practice, made once.
func (s *Server) dummy() string {
	s.dummyOnce.Do(func() {
		h, err := passwd.Hash(newMessageID())
		if err != nil {
			s.log.Error("smtp auth: making the timing-equaliser hash", "error", err)
		}
		s.dummyHash = h
	})
	return s.dummyHash
}

// guard turns the errors of a SASL exchange that are not SMTP replies (a
// malformed PLAIN response) into a fixed reply.
type guard struct{ sasl.Server }

func (g guard) Next(response []byte) ([]byte, bool, error) {
	ch, done, err := g.Server.Next(response)
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return nil, false, errAuthMalformed
		}
	}
	return ch, done, err
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login), which go-sasl no longer provides: the
// server asks "Username:" then "Password:"; an initial response is the user
// name.
type loginServer struct {
	auth     func(username, password string) error
	username string
	step     int
}

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.username = string(response)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(l.username, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// keyedTurns lets one holder at a time per key go on, and keeps the failed
// AUTH attempts of a key that the site state did not count (owe, settle);
// the zero value is ready to use. Turn entries exist only while a key is
// held or awaited, owed ones until they are counted.
type keyedTurns struct {
	mu   sync.Mutex
	m    map[string]*turn
	owed map[string]owedHits
}

// owedHits are failures of one key not counted yet.
type owedHits struct {
	n      int
	window time.Duration
}

const (
	// maxOwed bounds the keys with owed failures. While it is reached,
	// every AUTH attempt is refused (454) unchecked, so it is not
	// exceeded by more than the attempts under way; each attempt first
	// tries to count settleBatch of them.
	maxOwed     = 10_000
	settleBatch = 16
)

// owe records one failure of key that the site state did not take.
func (k *keyedTurns) owe(key string, window time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.oweLocked(key, owedHits{n: 1, window: window})
}

func (k *keyedTurns) oweLocked(key string, h owedHits) {
	if k.owed == nil {
		k.owed = map[string]owedHits{}
	}
	o := k.owed[key]
	o.n += h.n
	o.window = h.window
	k.owed[key] = o
}

// settle counts the failures owed to key in limits; an error means some
// still are owed (and the attempt must be refused).
func (k *keyedTurns) settle(ctx context.Context, limits sitestate.RateLimits, key string) error {
	k.mu.Lock()
	o, ok := k.owed[key]
	delete(k.owed, key) // taken: a concurrent settle does not count them twice
	k.mu.Unlock()
	if !ok {
		return nil
	}
	for o.n > 0 {
		if _, _, err := limits.Hit(ctx, key, o.window); err != nil {
			k.mu.Lock()
			k.oweLocked(key, o)
			k.mu.Unlock()
			return err
		}
		o.n--
	}
	return nil
}

// settleSome, while maxOwed keys have owed failures, tries to count those
// of settleBatch of them; an error means the limit is still reached.
func (k *keyedTurns) settleSome(ctx context.Context, limits sitestate.RateLimits) error {
	k.mu.Lock()
	if len(k.owed) < maxOwed {
		k.mu.Unlock()
		return nil
	}
	keys := make([]string, 0, settleBatch)
	for key := range k.owed {
		if len(keys) == settleBatch {
			break
		}
		keys = append(keys, key)
	}
	k.mu.Unlock()
	var err error
	for _, key := range keys {
		if err = k.settle(ctx, limits, key); err != nil {
			break
		}
	}
	k.mu.Lock()
	full := len(k.owed) >= maxOwed
	k.mu.Unlock()
	if full {
		return errors.Join(errors.New("too many keys with failed attempts not counted"), err)
	}
	return nil
}

type turn struct {
	ch      chan struct{} // holds a token while the key is held
	waiters int           // holders and waiters
}

// wait blocks until it is key's holder's turn (or ctx ends) and returns
// the function that passes the turn on.
func (k *keyedTurns) wait(ctx context.Context, key string) (release func(), err error) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*turn{}
	}
	t := k.m[key]
	if t == nil {
		t = &turn{ch: make(chan struct{}, 1)}
		k.m[key] = t
	}
	t.waiters++
	k.mu.Unlock()
	done := func() {
		k.mu.Lock()
		if t.waiters--; t.waiters == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
	select {
	case t.ch <- struct{}{}:
		return func() { <-t.ch; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
}
