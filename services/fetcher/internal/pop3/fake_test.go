package pop3

import (
	"bufio"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakeServer is a minimal POP3 server for what a real server cannot be made
// to do: drop the line mid-message, hang, send garbage, lie about sizes,
// lack CAPA. It serves one maildrop; handle can take over any command.
type fakeServer struct {
	t        testing.TB
	ln       net.Listener
	greeting string   // default "+OK fake ready"
	caps     []string // nil: CAPA answers -ERR
	user     string
	pass     string
	msgs     [][]byte

	// handle, if set, is called first for every command line; it returns
	// true if it answered (it may also close conn).
	handle func(fc *fakeConn, cmd string, args []string) bool

	mu   sync.Mutex
	cmds []string // command lines received (PASS and AUTH arguments included)
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

func (s *fakeServer) start() string {
	s.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.t.Fatal(err)
	}
	s.ln = ln
	var wg sync.WaitGroup
	s.t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				s.serve(&fakeConn{Conn: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)})
			}()
		}
	}()
	return ln.Addr().String()
}

func (s *fakeServer) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmds...)
}

func (s *fakeServer) serve(fc *fakeConn) {
	g := s.greeting
	if g == "" {
		g = "+OK fake ready"
	}
	fc.send(g)
	deleted := map[int]bool{}
	msg := func(args []string) (int, bool) {
		if len(args) == 0 {
			fc.send("-ERR argument missing")
			return 0, false
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 1 || n > len(s.msgs) || deleted[n] {
			fc.send("-ERR no such message")
			return 0, false
		}
		return n, true
	}
	for {
		line, err := fc.r.ReadString('\n')
		if err != nil {
			return
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
		if s.handle != nil && s.handle(fc, cmd, args) {
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
		case "APOP":
			ts := apopTimestamp(s.greeting)
			sum := md5.Sum([]byte(ts + s.pass))
			if ts != "" && len(args) == 2 && args[0] == s.user && args[1] == hex.EncodeToString(sum[:]) {
				fc.send("+OK logged in")
			} else {
				fc.send("-ERR [AUTH] authentication failed")
			}
		case "AUTH":
			var resp string
			if len(args) >= 2 {
				resp = args[1]
			} else {
				fc.send("+ ")
				l, _ := fc.r.ReadString('\n')
				resp = strings.TrimRight(l, "\r\n")
			}
			dec, _ := base64.StdEncoding.DecodeString(resp)
			if string(dec) == "\x00"+s.user+"\x00"+s.pass {
				fc.send("+OK logged in")
			} else {
				fc.send("-ERR [AUTH] authentication failed")
			}
		case "STAT":
			n, size := 0, 0
			for i, m := range s.msgs {
				if !deleted[i+1] {
					n++
					size += len(m)
				}
			}
			fc.send(fmt.Sprintf("+OK %d %d", n, size))
		case "LIST", "UIDL":
			if len(args) > 0 {
				if n, ok := msg(args); ok {
					fc.send(fmt.Sprintf("+OK %d %d", n, len(s.msgs[n-1])))
				}
				continue
			}
			fc.send("+OK")
			for i, m := range s.msgs {
				if deleted[i+1] {
					continue
				}
				if cmd == "LIST" {
					fc.send(fmt.Sprintf("%d %d", i+1, len(m)))
				} else {
					fc.send(fmt.Sprintf("%d uid-%d", i+1, i+1))
				}
			}
			fc.send(".")
		case "RETR":
			if n, ok := msg(args); ok {
				fc.send("+OK message follows")
				fc.sendRaw(dotStuff(s.msgs[n-1]))
			}
		case "TOP":
			if n, ok := msg(args); ok && len(args) == 2 {
				k, _ := strconv.Atoi(args[1])
				m := string(s.msgs[n-1])
				i := strings.Index(m, "\r\n\r\n") + 4
				lines := strings.SplitAfter(m[i:], "\r\n")
				fc.send("+OK")
				fc.sendRaw(dotStuff([]byte(m[:i] + strings.Join(lines[:min(k, len(lines))], ""))))
			}
		case "DELE":
			if n, ok := msg(args); ok {
				deleted[n] = true
				fc.send("+OK deleted")
			}
		case "RSET":
			clear(deleted)
			fc.send("+OK")
		case "NOOP":
			fc.send("+OK")
		case "QUIT":
			fc.send("+OK bye")
			return
		default:
			fc.send("-ERR unknown command")
		}
	}
}
