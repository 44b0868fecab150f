package testenv

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	alice = DovecotUser{Username: "alice@example.test", Password: "alice secret ü"}
	bob   = DovecotUser{Username: "Bob@Example.Test", Password: "bob-secret"}
)

// testMessage has an 8-bit header and body, lines that start with a dot
// (one is a lone "."), CRLF line endings and a final CRLF.
func testMessage(to, id string) []byte {
	return []byte(strings.Join([]string{
		"From: Sender <sender@example.org>",
		"To: " + to,
		"Subject: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln",
		"Message-ID: <" + id + "@example.org>",
		"Date: Mon, 02 Jan 2006 15:04:05 +0000",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=utf-8",
		"Content-Transfer-Encoding: 8bit",
		"",
		"Hello,",
		".a line starting with a dot",
		"..two dots",
		".",
		" .",
		"Sch\xc3\xb6ne Gr\xc3\xbc\xc3\x9fe",
		"",
	}, "\r\n"))
}

// failWithLog adds the instance's log to failure output.
func failWithLog(t *testing.T, d *DovecotServer) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- dovecot log ---\n%s", d.Log())
		}
	})
}

func TestDovecotLogin(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{Users: []DovecotUser{alice, bob}})
	failWithLog(t, d)

	if d.POP3SAddr != "" || d.IMAPSAddr != "" || d.CertPEM != nil {
		t.Errorf("TLS endpoints without TLS: %q %q %d", d.POP3SAddr, d.IMAPSAddr, len(d.CertPEM))
	}
	for _, a := range []string{d.POP3Addr, d.IMAPAddr, d.LMTPAddr} {
		if host, _, _ := net.SplitHostPort(a); host != "127.0.0.1" {
			t.Errorf("address %q not on 127.0.0.1", a)
		}
	}

	passwd, err := os.ReadFile(filepath.Join(d.Dir, "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []DovecotUser{alice, bob} {
		if bytes.Contains(passwd, []byte(u.Password)) {
			t.Errorf("passwd-file contains the plain password of %s", u.Username)
		}
	}
	if !regexp.MustCompile(`(?m)^alice@example\.test:\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}::::::$`).Match(passwd) {
		t.Errorf("passwd-file:\n%s", passwd)
	}

	t.Run("POP3", func(t *testing.T) {
		// From 127.0.0.2 so the connection is not "secured": the default
		// allows plaintext authentication anyway.
		c := newPOP3(t, dialUntrusted(t, d.POP3Addr))
		c.login(alice.Username, alice.Password)
		if got := c.ok("STAT"); got != "+OK 0 0" {
			t.Errorf("STAT = %q, want +OK 0 0", got)
		}
		c.quit()

		c = newPOP3(t, dial(t, d.POP3Addr))
		c.login("BOB@example.test", bob.Password) // login names are case-insensitive
		c.quit()

		c = newPOP3(t, dial(t, d.POP3Addr))
		c.ok("USER %s", alice.Username)
		if got := c.cmd("PASS %s", bob.Password); !strings.HasPrefix(got, "-ERR") {
			t.Errorf("PASS with the wrong password = %q, want -ERR", got)
		}
		c.ok("USER nobody@example.test")
		if got := c.cmd("PASS %s", alice.Password); !strings.HasPrefix(got, "-ERR") {
			t.Errorf("PASS for an unknown user = %q, want -ERR", got)
		}
		c.quit()
	})

	t.Run("IMAP", func(t *testing.T) {
		c := newIMAP(t, dial(t, d.IMAPAddr))
		if _, status := c.cmd("LOGIN %s %s", imapQuote(alice.Username), imapQuote("wrong")); !strings.HasPrefix(status, "NO") {
			t.Errorf("LOGIN with the wrong password = %q, want NO", status)
		}
		c.login(alice.Username, alice.Password)
		if n := c.selectInbox(); n != 0 {
			t.Errorf("INBOX has %d messages, want 0", n)
		}
		c.logout()
	})

	t.Run("Maildirs", func(t *testing.T) {
		for _, u := range []DovecotUser{alice, bob} {
			dir := d.UserMaildir(u.Username)
			if want := filepath.Join(d.MailDir, strings.ToLower(u.Username)); dir != want {
				t.Errorf("UserMaildir(%q) = %q, want %q", u.Username, dir, want)
			}
			for _, sub := range []string{"cur", "new", "tmp"} {
				if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
					t.Errorf("%s/%s: %v", dir, sub, err)
				}
			}
		}
	})
}

func TestDovecotLMTPDelivery(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{Users: []DovecotUser{alice, bob}})
	failWithLog(t, d)

	msg := testMessage(alice.Username, "lmtp-1")
	rcptCodes, dataCodes := lmtpDeliver(t, d.LMTPAddr, "sender@example.org", []string{alice.Username, "nobody@example.test"}, msg)
	if len(rcptCodes) != 2 || rcptCodes[0] != 250 || rcptCodes[1] != 550 {
		t.Fatalf("RCPT TO codes = %v, want [250 550] (unknown users are refused)", rcptCodes)
	}
	if len(dataCodes) != 1 || dataCodes[0] != 250 {
		t.Fatalf("DATA codes = %v, want [250]", dataCodes)
	}

	// The message as retrieved: Dovecot prepends Return-Path, Delivered-To
	// and Received; the original bytes follow unchanged.
	checkDelivered := func(t *testing.T, got []byte) {
		t.Helper()
		prefix, ok := bytes.CutSuffix(got, msg)
		if !ok {
			t.Fatalf("delivered message does not end with the original bytes:\n%q\nwant suffix\n%q", got, msg)
		}
		for _, h := range []string{"Return-Path: <sender@example.org>\r\n", "Delivered-To: alice@example.test\r\n"} {
			if !bytes.Contains(prefix, []byte(h)) {
				t.Errorf("added headers %q lack %q", prefix, h)
			}
		}
		if bytes.Contains(prefix, []byte("\r\n\r\n")) || !bytes.HasSuffix(prefix, []byte("\r\n")) {
			t.Errorf("added text is not just header lines: %q", prefix)
		}
	}

	var pop3Msg []byte
	t.Run("POP3", func(t *testing.T) {
		c := newPOP3(t, dial(t, d.POP3Addr))
		c.login(alice.Username, alice.Password)
		stat := c.ok("STAT")
		pop3Msg = c.multi("RETR 1")
		checkDelivered(t, pop3Msg)
		if want := fmt.Sprintf("+OK 1 %d", len(pop3Msg)); stat != want {
			t.Errorf("STAT = %q, want %q", stat, want)
		}
		if uidl := c.ok("UIDL 1"); !regexp.MustCompile(`^\+OK 1 [0-9a-f]{16}$`).MatchString(uidl) {
			t.Errorf("UIDL 1 = %q, want %%08Xu%%08Xv", uidl)
		}
		c.quit()
	})

	t.Run("IMAP", func(t *testing.T) {
		c := newIMAP(t, dial(t, d.IMAPAddr))
		c.login(alice.Username, alice.Password)
		if n := c.selectInbox(); n != 1 {
			t.Fatalf("INBOX has %d messages, want 1", n)
		}
		got := c.fetchBody(1)
		checkDelivered(t, got)
		if pop3Msg != nil && !bytes.Equal(got, pop3Msg) {
			t.Errorf("IMAP BODY[] differs from POP3 RETR:\n%q\n%q", got, pop3Msg)
		}
		c.logout()
	})

	t.Run("OtherUserSeesNothing", func(t *testing.T) {
		p := newPOP3(t, dial(t, d.POP3Addr))
		p.login(bob.Username, bob.Password)
		if got := p.ok("STAT"); got != "+OK 0 0" {
			t.Errorf("bob's STAT = %q, want +OK 0 0", got)
		}
		p.quit()
		c := newIMAP(t, dial(t, d.IMAPAddr))
		c.login(bob.Username, bob.Password)
		if n := c.selectInbox(); n != 0 {
			t.Errorf("bob's INBOX has %d messages, want 0", n)
		}
		c.logout()
	})
}

// TestDovecotMaildirDrop writes messages into Maildirs directly, as
// Postern's relay will: a root-owned file in tmp/, renamed into new/.
func TestDovecotMaildirDrop(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{Users: []DovecotUser{alice, bob}})
	failWithLog(t, d)

	drop := func(t *testing.T, username, name string, msg []byte) {
		t.Helper()
		dir := d.UserMaildir(username)
		tmp := filepath.Join(dir, "tmp", name)
		if err := os.WriteFile(tmp, msg, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "new", name)); err != nil {
			t.Fatal(err)
		}
	}
	name := func(n int) string {
		host, _ := os.Hostname()
		return fmt.Sprintf("%d.M%dP%dQ%d.%s", time.Now().Unix(), time.Now().Nanosecond()/1000, os.Getpid(), n, host)
	}

	t.Run("SeenByOpenIMAPSessionAndPOP3", func(t *testing.T) {
		c := newIMAP(t, dial(t, d.IMAPAddr))
		c.login(alice.Username, alice.Password)
		if n := c.selectInbox(); n != 0 {
			t.Fatalf("INBOX has %d messages, want 0", n)
		}

		msg := testMessage(alice.Username, "drop-1")
		drop(t, alice.Username, name(1), msg)

		if n := existsCount(t, c.ok("NOOP")); n != 1 {
			t.Fatalf("after NOOP: EXISTS %d, want 1", n)
		}
		if got := c.fetchBody(1); !bytes.Equal(got, msg) {
			t.Errorf("IMAP BODY[] = %q, want %q", got, msg)
		}
		c.logout()

		p := newPOP3(t, dial(t, d.POP3Addr))
		p.login(alice.Username, alice.Password)
		if got := p.ok("STAT"); got != fmt.Sprintf("+OK 1 %d", len(msg)) {
			t.Errorf("STAT = %q", got)
		}
		if got := p.multi("RETR 1"); !bytes.Equal(got, msg) {
			t.Errorf("POP3 RETR = %q, want %q", got, msg)
		}
		p.quit()
	})

	t.Run("LFOnlyFileIsServedWithCRLF", func(t *testing.T) {
		// bob's Maildir was created by StartDovecot and not touched by
		// Dovecot yet.
		msg := testMessage(bob.Username, "drop-2")
		drop(t, bob.Username, name(2), bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")))

		p := newPOP3(t, dial(t, d.POP3Addr))
		p.login(bob.Username, bob.Password)
		if got := p.multi("RETR 1"); !bytes.Equal(got, msg) {
			t.Errorf("POP3 RETR = %q, want %q", got, msg)
		}
		p.quit()

		c := newIMAP(t, dial(t, d.IMAPAddr))
		c.login(bob.Username, bob.Password)
		if n := c.selectInbox(); n != 1 {
			t.Fatalf("INBOX has %d messages, want 1", n)
		}
		if got := c.fetchBody(1); !bytes.Equal(got, msg) {
			t.Errorf("IMAP BODY[] = %q, want %q", got, msg)
		}
		c.logout()
	})

	t.Run("DeliverToMaildir", func(t *testing.T) {
		msg := testMessage(alice.Username, "drop-3")
		path := d.DeliverToMaildir(t, alice.Username, msg)
		if filepath.Dir(path) != filepath.Join(d.UserMaildir(alice.Username), "new") {
			t.Errorf("delivered to %s", path)
		}
		c := newIMAP(t, dial(t, d.IMAPAddr))
		c.login(alice.Username, alice.Password)
		if n := c.selectInbox(); n != 2 {
			t.Fatalf("INBOX has %d messages, want 2", n)
		}
		if got := c.fetchBody(2); !bytes.Equal(got, msg) {
			t.Errorf("IMAP BODY[] = %q, want %q", got, msg)
		}
		c.logout()
	})
}

func TestDovecotTLS(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{Users: []DovecotUser{alice}, TLS: true, DisablePlaintextAuth: true})
	failWithLog(t, d)

	if block, _ := pem.Decode(d.CertPEM); block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("CertPEM is not a PEM certificate: %q", d.CertPEM)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(d.CertPEM) {
		t.Fatal("CertPEM not usable as a root")
	}

	t.Run("POP3S", func(t *testing.T) {
		// Verified for the IP address, with a pool built from CertPEM.
		c := newPOP3(t, dialTLS(t, d.POP3SAddr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}))
		c.login(alice.Username, alice.Password)
		if got := c.ok("STAT"); got != "+OK 0 0" {
			t.Errorf("STAT = %q", got)
		}
		c.quit()
	})

	t.Run("IMAPS", func(t *testing.T) {
		c := newIMAP(t, dialTLS(t, d.IMAPSAddr, d.TLSConfig()))
		c.login(alice.Username, alice.Password)
		c.selectInbox()
		c.logout()
	})

	t.Run("UntrustedCertificateRefused", func(t *testing.T) {
		for _, addr := range []string{d.POP3SAddr, d.IMAPSAddr} {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{ServerName: "localhost", RootCAs: x509.NewCertPool()})
			if err == nil {
				c.Close()
				t.Fatalf("%s: handshake verified without CertPEM", addr)
			}
			if !errors.As(err, new(x509.UnknownAuthorityError)) {
				t.Errorf("%s: %v, want an unknown authority error", addr, err)
			}
		}
	})

	t.Run("POP3STLS", func(t *testing.T) {
		c := newPOP3(t, dialUntrusted(t, d.POP3Addr))
		capa := string(c.multi("CAPA"))
		if !strings.Contains(capa, "STLS\r\n") {
			t.Errorf("CAPA lacks STLS: %q", capa)
		}
		if got := c.cmd("USER %s", alice.Username); !strings.HasPrefix(got, "-ERR") {
			t.Errorf("USER before STLS = %q, want -ERR (plaintext auth disabled)", got)
		}
		c.startTLS(d.TLSConfig())
		c.login(alice.Username, alice.Password)
		c.ok("STAT")
		c.quit()
	})

	t.Run("IMAPSTARTTLS", func(t *testing.T) {
		c := newIMAP(t, dialUntrusted(t, d.IMAPAddr))
		if !strings.Contains(c.greeting, "STARTTLS") || !strings.Contains(c.greeting, "LOGINDISABLED") {
			t.Errorf("greeting lacks STARTTLS or LOGINDISABLED: %q", c.greeting)
		}
		if _, status := c.cmd("LOGIN %s %s", imapQuote(alice.Username), imapQuote(alice.Password)); strings.HasPrefix(status, "OK") {
			t.Fatalf("plaintext LOGIN before STARTTLS = %q, want refused", status)
		}
		c.startTLS(d.TLSConfig())
		caps := c.ok("CAPABILITY")
		if len(caps) == 0 || strings.Contains(caps[0].text, "LOGINDISABLED") || !strings.Contains(caps[0].text, "AUTH=PLAIN") {
			t.Errorf("CAPABILITY after STARTTLS = %+v", caps)
		}
		c.login(alice.Username, alice.Password)
		c.selectInbox()
		c.logout()
	})

	t.Run("LoopbackSameIPCountsAsSecure", func(t *testing.T) {
		// Dovecot quirk: 127.0.0.1 → 127.0.0.1 is "secured", so plaintext
		// login is allowed even with disable_plaintext_auth = yes.
		c := newIMAP(t, dial(t, d.IMAPAddr))
		c.login(alice.Username, alice.Password)
		c.logout()
	})
}

func TestDovecotCheckpassword(t *testing.T) {
	t.Parallel()
	script := filepath.Join(t.TempDir(), "checkpassword")
	// checkpassword protocol: "user\0password\0timestamp\0" on fd 3; on
	// success run argv[1] (Dovecot's checkpassword-reply), else exit 1.
	err := os.WriteFile(script, []byte(`#!/bin/sh
input=$(tr '\0' '\n' <&3)
user=$(printf '%s\n' "$input" | sed -n 1p)
pass=$(printf '%s\n' "$input" | sed -n 2p)
if [ "$user" = "carol@example.test" ] && [ "$pass" = "carol-pw" ]; then
	exec "$@"
fi
exit 1
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	d := StartDovecot(t, DovecotOptions{PassdbCheckpassword: script})
	failWithLog(t, d)

	c := newPOP3(t, dial(t, d.POP3Addr))
	c.ok("USER carol@example.test")
	if got := c.cmd("PASS wrong"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("PASS with the wrong password = %q, want -ERR", got)
	}
	c.ok("USER carol@example.test")
	c.ok("PASS carol-pw")
	c.ok("STAT")
	c.quit()

	msg := testMessage("carol@example.test", "checkpw-1")
	if _, data := lmtpDeliver(t, d.LMTPAddr, "sender@example.org", []string{"carol@example.test"}, msg); len(data) != 1 || data[0] != 250 {
		t.Fatalf("LMTP DATA codes %v", data)
	}
	i := newIMAP(t, dial(t, d.IMAPAddr))
	i.login("carol@example.test", "carol-pw")
	if n := i.selectInbox(); n != 1 {
		t.Fatalf("INBOX has %d messages, want 1", n)
	}
	if got := i.fetchBody(1); !bytes.HasSuffix(got, msg) {
		t.Errorf("IMAP BODY[] = %q", got)
	}
	i.logout()
}

// TestDovecotListenersAndStop checks that the instance listens on nothing
// but its 127.0.0.1 ports and that Stop leaves no process behind.
func TestDovecotListenersAndStop(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{Users: []DovecotUser{alice}, TLS: true})
	failWithLog(t, d)
	pid := d.cmd.Process.Pid

	// A logged-in IMAP session outlives a stopped master unless the harness
	// kills it too.
	c := newIMAP(t, dial(t, d.IMAPAddr))
	c.login(alice.Username, alice.Password)

	want := map[string]bool{}
	for _, a := range []string{d.POP3Addr, d.POP3SAddr, d.IMAPAddr, d.IMAPSAddr, d.LMTPAddr} {
		want[a] = true
	}
	got, err := groupListeners(pid)
	if err != nil {
		t.Logf("cannot inspect listening sockets: %v", err)
	} else {
		for a := range got {
			if !want[a] {
				t.Errorf("dovecot listens on %s, which is not one of its addresses %v", a, want)
			}
		}
		for a := range want {
			if !got[a] {
				t.Errorf("dovecot does not listen on %s (listening: %v)", a, got)
			}
		}
	}

	start := time.Now()
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Stop took %v", time.Since(start))
	if groupAlive(pid) {
		t.Errorf("processes of dovecot's group %d remain after Stop", pid)
	}
	for a := range want {
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after Stop", a)
		}
	}
	if err := d.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// groupListeners returns the TCP addresses that processes of the process
// group pgid listen on, from /proc (Linux).
func groupListeners(pgid int) (map[string]bool, error) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces.
		fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(fields) < 3 || fields[2] != strconv.Itoa(pgid) {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if ino, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(ino, "]")] = true
			}
		}
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("no sockets found for process group %d", pgid)
	}
	listening := map[string]bool{}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] { // 0A = LISTEN
				continue
			}
			listening[decodeProcAddr(fields[1])] = true
		}
		f.Close()
	}
	return listening, nil
}

// decodeProcAddr turns /proc/net/tcp's "0100007F:1F90" into "127.0.0.1:8080".
func decodeProcAddr(s string) string {
	hexIP, hexPort, _ := strings.Cut(s, ":")
	port, _ := strconv.ParseUint(hexPort, 16, 16)
	raw := make([]byte, len(hexIP)/2)
	for i := range raw {
		b, _ := strconv.ParseUint(hexIP[2*i:2*i+2], 16, 8)
		raw[i] = byte(b)
	}
	// The address is stored as 32-bit words in host (little-endian) order.
	for i := 0; i+4 <= len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	return net.JoinHostPort(net.IP(raw).String(), strconv.FormatUint(port, 10))
}

// TestDovecotAwkwardTestName: t.TempDir() paths carry the test's name, which
// may be too long for Dovecot's sockets or contain '#' (duplicate subtest
// names) and '%', which its configuration cannot carry.
func TestDovecotAwkwardTestName(t *testing.T) {
	t.Parallel()
	t.Run(strings.Repeat("long", 20)+"_100%#", func(t *testing.T) {
		d := StartDovecot(t, DovecotOptions{Users: []DovecotUser{alice}})
		failWithLog(t, d)
		if len(filepath.Join(d.Dir, "run")) > 75 || checkConfigPath(d.Dir) != nil || checkConfigPath(d.MailDir) != nil {
			t.Errorf("Dir %q, MailDir %q", d.Dir, d.MailDir)
		}
		c := newPOP3(t, dial(t, d.POP3Addr))
		c.login(alice.Username, alice.Password)
		c.quit()
	})
}
