package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the smarthost of both systems: an SMTP server that accepts
// everything and notes when each benchmark message arrived.
type sink struct {
	srv  *smtp.Server
	addr string

	mu      sync.Mutex
	arrived map[string]time.Time // X-Bench-Id → arrival
	dups    int
	notify  chan struct{}
}

func startSink() (*sink, error) {
	s := &sink{arrived: map[string]time.Time{}, notify: make(chan struct{}, 1)}
	s.srv = smtp.NewServer(s)
	s.srv.Domain = "sink.bench.invalid"
	s.srv.MaxMessageBytes = 30 << 20
	s.srv.MaxRecipients = 1000
	s.srv.AllowInsecureAuth = true
	s.srv.ReadTimeout = time.Minute
	s.srv.WriteTimeout = time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	go s.srv.Serve(ln)
	return s, nil
}

func (s *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }

type sinkSession struct{ s *sink }

func (*sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (*sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (*sinkSession) Reset()                               {}
func (*sinkSession) Logout() error                        { return nil }
func (ss *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	id := headerValue(b, "X-Bench-Id")
	now := time.Now()
	ss.s.mu.Lock()
	if _, ok := ss.s.arrived[id]; ok {
		ss.s.dups++
	} else {
		ss.s.arrived[id] = now
	}
	ss.s.mu.Unlock()
	select {
	case ss.s.notify <- struct{}{}:
	default:
	}
	return nil
}

// headerValue finds a header field in the raw message without parsing it
// fully (the benchmark's own header, written by inject).
func headerValue(msg []byte, name string) string {
	i := bytes.Index(msg, []byte("\n"+name+": "))
	if i < 0 {
		return ""
	}
	v := msg[i+len(name)+3:]
	if j := bytes.IndexByte(v, '\n'); j >= 0 {
		v = v[:j]
	}
	return strings.TrimSpace(string(v))
}

// waitFor waits until every id of the run arrived, or timeout.
func (s *sink) waitFor(run string, n int, timeout time.Duration) (map[string]time.Time, error) {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		got := map[string]time.Time{}
		for id, at := range s.arrived {
			if strings.HasPrefix(id, run+"-") {
				got[id] = at
			}
		}
		s.mu.Unlock()
		if len(got) >= n {
			return got, nil
		}
		select {
		case <-s.notify:
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			return got, fmt.Errorf("%d of %d messages reached the sink within %s", len(got), n, timeout)
		}
	}
}

// message builds benchmark message seq of about size bytes.
func message(run string, seq, size int, from, to string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: bench %s %d\r\nMessage-ID: <%s-%d@bench.invalid>\r\nX-Bench-Id: %s-%d\r\nDate: %s\r\n\r\n",
		from, to, run, seq, run, seq, run, seq, time.Now().Format(time.RFC1123Z))
	line := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,", 1) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

type injectResult struct {
	accepted map[string]time.Time // X-Bench-Id → when the 250 came
	start    time.Time
	elapsed  time.Duration
	bytes    int64
	errors   int
}

// inject sends n messages over `sessions` parallel SMTP sessions (several
// messages per session, like smtp-source), alternating sizes.
func inject(addr, run string, n, sessions int, sizes []int, from, to string) (*injectResult, error) {
	res := &injectResult{accepted: make(map[string]time.Time, n)}
	var mu sync.Mutex
	var next atomic.Int64
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	res.start = start
	for w := 0; w < sessions; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := smtp.Dial(addr)
			if err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
				return
			}
			defer c.Close()
			if err := c.Hello("injector.bench.invalid"); err != nil {
				mu.Lock()
				firstErr = errors.Join(firstErr, err)
				mu.Unlock()
				return
			}
			for {
				seq := int(next.Add(1))
				if seq > n {
					break
				}
				msg := message(run, seq, sizes[seq%len(sizes)], from, to)
				err := c.SendMail(from, []string{to}, bytes.NewReader(msg))
				mu.Lock()
				if err != nil {
					res.errors++
					if res.errors <= 3 {
						firstErr = errors.Join(firstErr, fmt.Errorf("message %d: %w", seq, err))
					}
				} else {
					res.accepted[fmt.Sprintf("%s-%d", run, seq)] = time.Now()
					res.bytes += int64(len(msg))
				}
				mu.Unlock()
				if err != nil {
					_ = c.Reset()
				}
			}
			_ = c.Quit()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if len(res.accepted) == 0 {
		return res, fmt.Errorf("nothing accepted: %v", firstErr)
	}
	if firstErr != nil {
		return res, firstErr
	}
	return res, nil
}

// latencies returns the p50 and p99 of arrival − acceptance.
func latencies(acc, arr map[string]time.Time) (p50, p99 time.Duration) {
	var ds []time.Duration
	for id, a := range acc {
		if at, ok := arr[id]; ok {
			ds = append(ds, at.Sub(a))
		}
	}
	if len(ds) == 0 {
		return 0, 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], ds[len(ds)*99/100]
}
