package pop3

import (
	"context"
	"net"
	"sync"
	"time"
)

// deadlineConn arms the connection's deadline before every Read and Write:
// now + timeout, or the current command's context deadline if earlier. When
// that context is cancelled, the deadline is moved into the past, which
// aborts a blocked Read or Write. The mutex orders arming against
// cancellation so that a cancellation is never overwritten.
type deadlineConn struct {
	net.Conn
	timeout time.Duration

	mu       sync.Mutex
	ctx      context.Context
	canceled bool
}

func (d *deadlineConn) arm() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.canceled {
		return d.Conn.SetDeadline(time.Unix(1, 0))
	}
	dl := time.Now().Add(d.timeout)
	if d.ctx != nil {
		if cd, ok := d.ctx.Deadline(); ok && cd.Before(dl) {
			dl = cd
		}
	}
	return d.Conn.SetDeadline(dl)
}

func (d *deadlineConn) Read(p []byte) (int, error) {
	if err := d.arm(); err != nil {
		return 0, err
	}
	return d.Conn.Read(p)
}

func (d *deadlineConn) Write(p []byte) (int, error) {
	if err := d.arm(); err != nil {
		return 0, err
	}
	return d.Conn.Write(p)
}

// bind makes ctx the context of the I/O that follows, until the returned
// function is called.
func (d *deadlineConn) bind(ctx context.Context) (unbind func()) {
	d.mu.Lock()
	d.ctx, d.canceled = ctx, false
	d.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.ctx == ctx {
			d.canceled = true
			d.Conn.SetDeadline(time.Unix(1, 0))
		}
	})
	return func() {
		stop()
		d.mu.Lock()
		d.ctx, d.canceled = nil, false
		d.mu.Unlock()
	}
}
