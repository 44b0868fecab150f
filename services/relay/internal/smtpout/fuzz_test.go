package smtpout_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/postern/postern/services/relay/internal/smtpout"
)

// FuzzServerReplies plays arbitrary bytes as a server's side of a session
// (greeting and every reply, sent at once, then end of stream): Send must
// neither panic nor hang, and returns one result per recipient, delivered
// only with a 250.
func FuzzServerReplies(f *testing.F) {
	f.Add([]byte("220 hi\r\n250-x\r\n250 SIZE 10\r\n250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n"), true)
	f.Add([]byte("220 hi\r\n250 x\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n"), false)
	f.Add([]byte("220 hi\r\n250 x\r\n250 ok\r\n250 ok\r\n354 go\r\n451 4.3.0\r\n"), true)
	f.Add([]byte("220-a\r\n220 b\r\n250 x\r\n421 bye\r\n"), false)
	f.Add([]byte("999 what\r\n"), false)
	f.Add([]byte("220 hi\r\n250 x\r\n250 ok\r\n2"), true)
	f.Fuzz(func(t *testing.T, script []byte, twoRcpts bool) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			// The whole script at once (the client reads it as the
			// replies to its commands), then end of stream: a client
			// waiting for more gets EOF at once.
			_, _ = c.Write(script)
			_ = c.(*net.TCPConn).CloseWrite()
			_, _ = io.Copy(io.Discard, c)
		}()
		p, err := smtpout.NewPool(smtpout.Options{Name: "fuzz", Addr: l.Addr().String(), TLS: smtpout.TLSNone,
			DialTimeout: time.Second, CommandTimeout: time.Second, DataTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		rcpts := []string{"a@example.net"}
		if twoRcpts {
			rcpts = append(rcpts, "b@example.net")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		res := p.Send(ctx, "s@example.com", rcpts, []byte("Subject: x\r\n\r\nbody\r\n"))
		if len(res) != len(rcpts) {
			t.Fatalf("%d results for %d recipients", len(res), len(rcpts))
		}
		for i, r := range res {
			if r.Recipient != rcpts[i] {
				t.Errorf("result %d for %q", i, r.Recipient)
			}
			if r.Delivered() && r.Code != 250 {
				t.Errorf("delivered with code %d", r.Code)
			}
			if !r.Delivered() && r.Reason() == "" {
				t.Errorf("a failure without a reason")
			}
		}
	})
}
