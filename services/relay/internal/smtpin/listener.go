package smtpin

import (
	"crypto/rand"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// limitListener admits at most cap(sem) connections at a time; the others
// are answered 421 (when the listener speaks in clear first) and closed.
// Every admitted connection is a *sessionConn.
type limitListener struct {
	net.Listener
	srv   *Server
	name  string
	sem   chan struct{}
	plain bool // the server greets in clear (not implicit TLS)
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
		default:
			l.srv.inst.rejected(l.name, "connections")
			l.srv.log.Debug("smtp connection refused: too many connections", "listener", l.name,
				"remote", c.RemoteAddr().String(), "max_connections", cap(l.sem))
			if l.plain {
				_ = c.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = c.Write([]byte("421 4.7.0 " + l.srv.hostname + " Too many connections, try again later\r\n"))
			}
			_ = c.Close()
			continue
		}
		sc := &sessionConn{
			Conn:    c,
			srv:     l.srv,
			id:      newSessionID(),
			idle:    l.srv.cfg.Timeouts.Command,
			end:     time.Now().Add(l.srv.cfg.Timeouts.Session),
			release: func() { <-l.sem },
		}
		l.srv.track(sc)
		l.srv.inst.session(l.name)
		return sc, nil
	}
}

// sessionConn is one client connection. It enforces the time limits itself:
// before every read the deadline is the command timeout from now, capped by
// the end of the session (and, while the server drains, now for a
// connection that is not receiving a message); before every write the
// command timeout from now. Deadlines set by callers (the TLS layer) are
// honoured when they come sooner.
type sessionConn struct {
	net.Conn
	srv  *Server
	id   string
	idle time.Duration
	end  time.Time
	// busy is set while the session receives and publishes a message: a
	// drain lets it finish.
	busy atomic.Bool

	mu      sync.Mutex
	readDL  time.Time
	writeDL time.Time

	closeOnce sync.Once
	release   func()
}

func (c *sessionConn) Read(b []byte) (int, error) {
	now := time.Now()
	d := now.Add(c.idle)
	if c.end.Before(d) {
		d = c.end
	}
	if c.srv.draining.Load() && !c.busy.Load() {
		d = now
	}
	c.mu.Lock()
	if !c.readDL.IsZero() && c.readDL.Before(d) {
		d = c.readDL
	}
	c.mu.Unlock()
	if err := c.Conn.SetReadDeadline(d); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *sessionConn) Write(b []byte) (int, error) {
	d := time.Now().Add(c.idle)
	c.mu.Lock()
	if !c.writeDL.IsZero() && c.writeDL.Before(d) {
		d = c.writeDL
	}
	c.mu.Unlock()
	if err := c.Conn.SetWriteDeadline(d); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// SetDeadline records t as an extra limit on reads and writes.
func (c *sessionConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDL, c.writeDL = t, t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

// SetReadDeadline records t as an extra limit on reads.
func (c *sessionConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDL = t
	c.mu.Unlock()
	return c.Conn.SetReadDeadline(t)
}

// SetWriteDeadline records t as an extra limit on writes.
func (c *sessionConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.writeDL = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

// interrupt wakes up a read blocked on an idle connection (drain).
func (c *sessionConn) interrupt() {
	if !c.busy.Load() {
		_ = c.Conn.SetReadDeadline(time.Now())
	}
}

func (c *sessionConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.srv.untrack(c)
		c.release()
	})
	return err
}

// newSessionID returns a short random id naming one connection in logs and
// on mail.inbound.
func newSessionID() string { return strings.ToLower(rand.Text()[:16]) }

// newMessageID returns a random id: 26 base32 characters, 130 bits — the
// mail.inbound id of an accepted message without a Message-ID field (one
// with a Message-ID gets a derived id, see id.go).
func newMessageID() string { return strings.ToLower(rand.Text()) }
