package download

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakePOP3 is a small POP3 server for what a real server cannot be made to
// do: drop the line mid-message, refuse UIDL, stall. Its maildrop persists
// across connections, and like a real server it removes messages marked
// with DELE only at QUIT.
type fakePOP3 struct {
	t    testing.TB
	ln   net.Listener
	user string
	pass string
	caps []string // nil: CAPA answers -ERR

	// handle, if set, sees every command first (with the session's number,
	// from 1); it returns true if it answered (it may close the
	// connection).
	handle func(fc *fakeConn, session int, cmd string, args []string) bool

	mu       sync.Mutex
	msgs     []fakeMsg
	sessions int
	cmds     []string
}

type fakeMsg struct {
	uid  string
	data []byte
}

type fakeConn struct {
	net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func (fc *fakeConn) send(lines ...string) {
	for _, l := range lines {
		fc.w.WriteString(l + "\r\n")
	}
	fc.w.Flush()
}

func (fc *fakeConn) sendRaw(b []byte) {
	fc.w.Write(b)
	fc.w.Flush()
}

func newFakePOP3(t testing.TB, user, pass string) *fakePOP3 {
	s := &fakePOP3{t: t, user: user, pass: pass, caps: []string{"USER", "UIDL", "PIPELINING"}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.sessions++
			n := s.sessions
			s.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				s.serve(&fakeConn{Conn: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}, n)
			}()
		}
	}()
	return s
}

func (s *fakePOP3) hostPort() (string, int) {
	a := s.ln.Addr().(*net.TCPAddr)
	return a.IP.String(), a.Port
}

func (s *fakePOP3) add(uid string, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, fakeMsg{uid: uid, data: data})
}

func (s *fakePOP3) uids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, m := range s.msgs {
		out = append(out, m.uid)
	}
	return out
}

func (s *fakePOP3) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmds...)
}

func (s *fakePOP3) serve(fc *fakeConn, session int) {
	s.mu.Lock()
	msgs := append([]fakeMsg(nil), s.msgs...) // the maildrop as of login
	s.mu.Unlock()
	deleted := map[int]bool{}
	fc.send("+OK fake ready")
	num := func(args []string) (int, bool) {
		if len(args) == 0 {
			fc.send("-ERR argument missing")
			return 0, false
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 1 || n > len(msgs) || deleted[n] {
			fc.send("-ERR no such message")
			return 0, false
		}
		return n, true
	}
	for {
		line, err := fc.r.ReadString('\n')
		if err != nil {
			return // a lost connection discards the deletions
		}
		line = strings.TrimRight(line, "\r\n")
		s.mu.Lock()
		s.cmds = append(s.cmds, line)
		s.mu.Unlock()
		f := strings.Fields(line)
		if len(f) == 0 {
			fc.send("-ERR empty command")
			continue
		}
		cmd, args := strings.ToUpper(f[0]), f[1:]
		if s.handle != nil && s.handle(fc, session, cmd, args) {
			continue
		}
		switch cmd {
		case "CAPA":
			if s.caps == nil {
				fc.send("-ERR unknown command")
				continue
			}
			fc.send("+OK capabilities follow")
			fc.send(s.caps...)
			fc.send(".")
		case "USER":
			fc.send("+OK")
		case "PASS":
			if strings.TrimPrefix(line, "PASS ") == s.pass {
				fc.send("+OK logged in")
			} else {
				fc.send("-ERR [AUTH] invalid password")
			}
		case "STAT":
			fc.send(fmt.Sprintf("+OK %d 0", len(msgs)))
		case "LIST", "UIDL":
			fc.send("+OK")
			for i, m := range msgs {
				if deleted[i+1] {
					continue
				}
				if cmd == "LIST" {
					fc.send(fmt.Sprintf("%d %d", i+1, len(m.data)))
				} else {
					fc.send(fmt.Sprintf("%d %s", i+1, m.uid))
				}
			}
			fc.send(".")
		case "RETR":
			if n, ok := num(args); ok {
				fc.send("+OK message follows")
				fc.sendRaw(dotStuff(msgs[n-1].data))
			}
		case "DELE":
			if n, ok := num(args); ok {
				deleted[n] = true
				fc.send("+OK deleted")
			}
		case "NOOP":
			fc.send("+OK")
		case "QUIT":
			s.mu.Lock()
			var keep []fakeMsg
			for _, m := range s.msgs {
				gone := false
				for n := range deleted {
					if msgs[n-1].uid == m.uid {
						gone = true
					}
				}
				if !gone {
					keep = append(keep, m)
				}
			}
			s.msgs = keep
			s.mu.Unlock()
			fc.send("+OK bye")
			return
		default:
			fc.send("-ERR unknown command")
		}
	}
}

// dotStuff encodes msg as a multi-line POP3 response body, with the final
// ".".
func dotStuff(msg []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter(msg, []byte("\r\n")) {
		if len(l) == 0 {
			continue
		}
		if l[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(l)
	}
	if !bytes.HasSuffix(msg, []byte("\r\n")) && len(msg) > 0 {
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}
