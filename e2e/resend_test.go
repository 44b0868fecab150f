package e2e

// RFC 1047's duplicate window on the client's side, made on purpose: a
// proxy between a sending MTA and the relay's inbound listener passes the
// whole transaction through but swallows the relay's 250 to the final dot
// and cuts the connection. The relay has the message (mail.inbound
// acknowledged it); the client does not know, and sends it again.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/postern/postern/e2e/internal/harness"
)

// TestResendAfterLostReply: a message with a Message-ID sent again after
// its 250 was lost is in the mailbox once — the relay gave both
// acceptances one inbound id and the router dropped the second. The same
// done with a message without a Message-ID (which keeps a random id per
// acceptance) delivers it twice: the proxy really opens the window.
func TestResendAfterLostReply(t *testing.T) {
	t.Parallel()
	p := startPipeline(t, harness.SiteOptions{}, alice, bob)
	const from = "partner@outside.example"
	withID := harness.NewMessage(from, bob.Address, "resent after a lost reply", "<resend-1@outside.example>", "Hello Bob.")
	withoutID := []byte("From: <" + from + ">\r\nTo: <" + bob.Address + ">\r\nSubject: alert without a Message-ID\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\n\r\nDisk full.\r\n")

	for _, msg := range [][]byte{withID, withoutID} {
		proxy := startReplyEater(t, p.site.Addr("inbound"))
		c, err := smtp.Dial(proxy.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.CommandTimeout, c.SubmissionTimeout = 30*time.Second, 30*time.Second
		if err := c.Hello(harness.InboundHelo); err != nil {
			t.Fatal(err)
		}
		err = c.SendMail(from, []string{bob.Address}, bytes.NewReader(msg))
		c.Close()
		if err == nil {
			t.Fatal("the message was answered through the proxy; want the 250 swallowed")
		}
		if !proxy.ate() {
			t.Fatalf("the proxy did not swallow a 250 (the client got %v)", err)
		}
		// The client sends it again, as a mail client or MTA does.
		if err := p.site.SendInbound(t, from, []string{bob.Address}, msg); err != nil {
			t.Fatalf("sending again: %v", err)
		}
	}

	// Both messages in, then nothing more for a while.
	subjects := func() (map[string]int, []byte, error) {
		msgs, err := p.site.MaildirMessages(bob.Username)
		if err != nil {
			return nil, nil, err
		}
		n := map[string]int{}
		var first []byte
		for _, m := range msgs {
			for _, s := range []string{"resent after a lost reply", "alert without a Message-ID"} {
				if bytes.Contains(m, []byte("Subject: "+s+"\r\n")) {
					n[s]++
					if first == nil && s == "resent after a lost reply" {
						first = m
					}
				}
			}
		}
		return n, first, nil
	}
	harness.Eventually(t, 60*time.Second, "both messages in bob's mailbox", func() error {
		n, _, err := subjects()
		if err != nil {
			return err
		}
		if n["resent after a lost reply"] == 0 || n["alert without a Message-ID"] == 0 {
			return fmt.Errorf("so far %v", n)
		}
		return nil
	}, p.site.Process)
	harness.Quiesce(t, 60*time.Second, 3*time.Second, "bob's mailbox settling", func() (string, error) {
		n, _, err := subjects()
		return fmt.Sprint(n), err
	}, p.site.Process)
	n, delivered, err := subjects()
	if err != nil {
		t.Fatal(err)
	}
	if got := n["resent after a lost reply"]; got != 1 {
		t.Errorf("the message with a Message-ID sent again after a lost 250 is in bob's mailbox %d times, want once", got)
	}
	if got := n["alert without a Message-ID"]; got != 2 {
		t.Errorf("the message without a Message-ID sent again after a lost 250 is in bob's mailbox %d times, want twice (each acceptance a message of its own)", got)
	}

	// The relay took the message twice, under one id; the router routed
	// the second as a duplicate.
	m := regexp.MustCompile(`\(Postern\) with ESMTP id ([a-z2-7]+)`).FindSubmatch(delivered)
	if m == nil {
		t.Fatalf("the delivered message has no Received field of the relay:\n%.400s", delivered)
	}
	id := string(m[1])
	accepted, duplicate := 0, 0
	for _, line := range strings.Split(p.site.Log(), "\n") {
		switch {
		case strings.Contains(line, `"smtp message accepted"`) && strings.Contains(line, `"id":"`+id+`"`):
			accepted++
		case strings.Contains(line, `"message routed"`) && strings.Contains(line, `"inbound_id":"`+id+`"`) && strings.Contains(line, `"result":"duplicate"`):
			duplicate++
		}
	}
	if accepted != 2 || duplicate != 1 {
		t.Errorf("inbound id %s: accepted %d times and routed as a duplicate %d times, want 2 and 1", id, accepted, duplicate)
	}
}

// replyEater is a TCP proxy for one plaintext SMTP session: it passes
// everything through until the client has sent the end of a message's
// data, then swallows the server's 250 to it and closes both connections.
type replyEater struct {
	addr string
	mu   sync.Mutex
	done bool // a 250 was swallowed
}

func (r *replyEater) ate() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done
}

func startReplyEater(t *testing.T, server string) *replyEater {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &replyEater{addr: ln.Addr().String()}
	go func() {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		ln.Close()
		defer client.Close()
		srv, err := net.Dial("tcp", server)
		if err != nil {
			return
		}
		defer srv.Close()
		var (
			mu      sync.Mutex
			dataEnd bool // the client sent <CRLF>.<CRLF>
		)
		go func() { // client → server, watching for the end of the data
			var tail []byte
			buf := make([]byte, 32<<10)
			for {
				n, err := client.Read(buf)
				if n > 0 {
					tail = append(tail, buf[:n]...)
					if bytes.Contains(tail, []byte("\r\n.\r\n")) {
						mu.Lock()
						dataEnd = true
						mu.Unlock()
					}
					if len(tail) > 4 {
						tail = tail[len(tail)-4:]
					}
					if _, werr := srv.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		br := bufio.NewReader(srv)
		for { // server → client, line by line
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			mu.Lock()
			end := dataEnd
			mu.Unlock()
			if end && strings.HasPrefix(line, "250 ") {
				r.mu.Lock()
				r.done = true
				r.mu.Unlock()
				return // both connections close: the client never sees it
			}
			if _, err := io.WriteString(client, line); err != nil {
				return
			}
		}
	}()
	return r
}
