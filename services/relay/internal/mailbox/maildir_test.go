package mailbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTestMaildir(t *testing.T, root string) *Maildir {
	t.Helper()
	cfg := DefaultConfig().Maildir
	cfg.Root = root
	m, err := NewMaildir(cfg, Options{Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func msgFor(id string) Message {
	return Message{
		DeliveryID: id, Username: "alice", Recipient: "alice@example.test", MailFrom: "bob@example.org",
		Data: []byte("Subject: " + id + "\r\n\r\nbody of " + id + "\r\n"),
	}
}

// files returns the names in dir/sub (sorted).
func files(t *testing.T, dir, sub string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// mailboxMessages returns the contents of the files in new/ and cur/.
func mailboxMessages(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, sub := range []string{"new", "cur"} {
		for _, n := range files(t, dir, sub) {
			b, err := os.ReadFile(filepath.Join(dir, sub, n))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		}
	}
	slices.Sort(out)
	return out
}

var errCrash = errors.New("simulated crash")

// TestMaildirFile checks the file a delivery leaves: in new/, a
// Dovecot-style unique name whose S= is the file's size, the envelope
// fields then the message unchanged, not readable by others; tmp/ empty.
func TestMaildirFile(t *testing.T) {
	root := t.TempDir()
	m := newTestMaildir(t, root)
	msg := msgFor("f-1")
	if err := m.Deliver(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "alice")
	if tmp := files(t, dir, "tmp"); len(tmp) != 0 {
		t.Errorf("tmp/ = %v, want empty", tmp)
	}
	news := files(t, dir, "new")
	if len(news) != 1 {
		t.Fatalf("new/ = %v, want one file", news)
	}
	re := regexp.MustCompile(`^(\d+)\.M(\d+)P(\d+)Q(\d+)R([0-9a-f]{8})\.relay\.test,S=(\d+)$`)
	sm := re.FindStringSubmatch(news[0])
	if sm == nil {
		t.Fatalf("file name %q does not match %v", news[0], re)
	}
	path := filepath.Join(dir, "new", news[0])
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	wantData := "Return-Path: <bob@example.org>\r\nDelivered-To: alice@example.test\r\n" + string(msg.Data)
	if string(data) != wantData {
		t.Errorf("file holds %q, want %q", data, wantData)
	}
	if size, _ := strconv.Atoi(sm[6]); size != len(data) {
		t.Errorf("S=%d but the file has %d bytes", size, len(data))
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("message mode %v: readable by others", fi.Mode())
	}
	for _, sub := range []string{"cur", "new", "tmp"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			t.Errorf("%s/: %v", sub, err)
		}
	}
}

// TestMaildirLFMessage: a message with bare LF line ends gets LF envelope
// fields, so the file is consistent.
func TestMaildirLFMessage(t *testing.T) {
	root := t.TempDir()
	m := newTestMaildir(t, root)
	msg := msgFor("lf")
	msg.Data = []byte("Subject: lf\n\nbody\n")
	msg.MailFrom = ""
	if err := m.Deliver(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	got := mailboxMessages(t, filepath.Join(root, "alice"))
	want := "Return-Path: <>\nDelivered-To: alice@example.test\nSubject: lf\n\nbody\n"
	if len(got) != 1 || got[0] != want {
		t.Errorf("mailbox = %q, want [%q]", got, want)
	}
}

// TestMaildirDuplicate: the same id twice is one message, even after the
// user read it (moved to cur/) or deleted it.
func TestMaildirDuplicate(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	m := newTestMaildir(t, root)
	dir := filepath.Join(root, "alice")
	for range 2 {
		if err := m.Deliver(ctx, msgFor("d-1")); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(mailboxMessages(t, dir)); n != 1 {
		t.Fatalf("%d messages after delivering one id twice, want 1", n)
	}
	// Read by an IMAP client: Dovecot moves it to cur/ with flags.
	name := files(t, dir, "new")[0]
	if err := os.Rename(filepath.Join(dir, "new", name), filepath.Join(dir, "cur", name+":2,S")); err != nil {
		t.Fatal(err)
	}
	if err := m.Deliver(ctx, msgFor("d-1")); err != nil {
		t.Fatal(err)
	}
	if n := len(mailboxMessages(t, dir)); n != 1 {
		t.Fatalf("%d messages after a redelivery of a read message, want 1", n)
	}
	// Deleted by the user: a redelivery does not bring it back.
	os.Remove(filepath.Join(dir, "cur", name+":2,S"))
	if err := m.Deliver(ctx, msgFor("d-1")); err != nil {
		t.Fatal(err)
	}
	if n := len(mailboxMessages(t, dir)); n != 0 {
		t.Fatalf("%d messages after a redelivery of a deleted message, want 0", n)
	}
	// A restarted relay (new deliverer) remembers too.
	if err := newTestMaildir(t, root).Deliver(ctx, msgFor("d-1")); err != nil {
		t.Fatal(err)
	}
	if n := len(mailboxMessages(t, dir)); n != 0 {
		t.Fatalf("%d messages after a redelivery by a restarted relay, want 0", n)
	}
	// Another user with the same delivery id is another delivery.
	other := msgFor("d-1")
	other.Username = "bob"
	if err := m.Deliver(ctx, other); err != nil {
		t.Fatal(err)
	}
	if n := len(mailboxMessages(t, filepath.Join(root, "bob"))); n != 1 {
		t.Fatalf("bob has %d messages, want 1", n)
	}
}

// TestMaildirCrash simulates the relay dying inside a delivery and the
// record being delivered again by a restarted relay.
func TestMaildirCrash(t *testing.T) {
	cases := []struct {
		stage string
		// prepare runs on the Maildir between the crash and the
		// redelivery (e.g. an IMAP client reading the message).
		prepare func(t *testing.T, dir string)
		// wantAfterCrash is the number of messages the crash left.
		wantAfterCrash int
	}{
		// Marker written, rename not done: redelivered, once.
		{stage: "pending", wantAfterCrash: 0},
		// Renamed, marker not yet D: found in new/, not delivered again.
		{stage: "renamed", wantAfterCrash: 1},
		// Renamed, then read (moved to cur/ with flags) before the
		// redelivery: found in cur/.
		{stage: "renamed", wantAfterCrash: 1, prepare: func(t *testing.T, dir string) {
			name := files(t, dir, "new")[0]
			if err := os.Rename(filepath.Join(dir, "new", name), filepath.Join(dir, "cur", name+":2,S")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for i, tc := range cases {
		t.Run(fmt.Sprintf("%s#%d", tc.stage, i), func(t *testing.T) {
			ctx := context.Background()
			root := t.TempDir()
			dir := filepath.Join(root, "alice")

			crashing := newTestMaildir(t, root)
			crashing.failAt = func(stage string) error {
				if stage == tc.stage {
					return errCrash
				}
				return nil
			}
			if err := crashing.Deliver(ctx, msgFor("c-1")); !errors.Is(err, errCrash) {
				t.Fatalf("Deliver = %v, want the simulated crash", err)
			}
			if n := len(mailboxMessages(t, dir)); n != tc.wantAfterCrash {
				t.Fatalf("%d messages after the crash, want %d", n, tc.wantAfterCrash)
			}
			if tc.prepare != nil {
				tc.prepare(t, dir)
			}

			restarted := newTestMaildir(t, root)
			for range 2 {
				if err := restarted.Deliver(ctx, msgFor("c-1")); err != nil {
					t.Fatal(err)
				}
			}
			got := mailboxMessages(t, dir)
			if len(got) != 1 {
				t.Fatalf("%d messages after redelivery, want exactly 1", len(got))
			}
			if !strings.HasSuffix(got[0], string(msgFor("c-1").Data)) {
				t.Errorf("message = %q", got[0])
			}
			if tmp := files(t, dir, "tmp"); len(tmp) != 0 {
				t.Errorf("tmp/ = %v after recovery, want empty", tmp)
			}
		})
	}
}

// TestMaildirConcurrent: concurrent deliveries of distinct ids all land;
// concurrent deliveries of one id land once (they wait for each other on
// the marker's lock, also across deliverers as across processes).
func TestMaildirConcurrent(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	ms := []*Maildir{newTestMaildir(t, root), newTestMaildir(t, root)}
	const distinct, copies = 20, 8
	var wg sync.WaitGroup
	errs := make(chan error, distinct+copies)
	for i := range distinct + copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "same"
			if i < distinct {
				id = fmt.Sprintf("id-%02d", i)
			}
			errs <- ms[i%2].Deliver(ctx, msgFor(id))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	got := mailboxMessages(t, filepath.Join(root, "alice"))
	if len(got) != distinct+1 {
		t.Fatalf("%d messages, want %d", len(got), distinct+1)
	}
	for i := 1; i < len(got); i++ {
		if got[i] == got[i-1] {
			t.Errorf("message delivered twice: %q", got[i])
		}
	}
}

// TestMaildirLockWaitHonoursContext: a delivery waiting for another one of
// the same id gives up when its context ends.
func TestMaildirLockWaitHonoursContext(t *testing.T) {
	root := t.TempDir()
	m := newTestMaildir(t, root)
	release := make(chan struct{})
	entered := make(chan struct{})
	m.failAt = func(stage string) error {
		if stage == "pending" {
			close(entered)
			<-release
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- m.Deliver(context.Background(), msgFor("w-1")) }()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	other := newTestMaildir(t, root)
	if err := other.Deliver(ctx, msgFor("w-1")); !errors.Is(err, context.Canceled) || IsPermanent(err) {
		t.Errorf("waiting Deliver with a cancelled context = %v, want a temporary context.Canceled", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := len(mailboxMessages(t, filepath.Join(root, "alice"))); n != 1 {
		t.Fatalf("%d messages, want 1", n)
	}
}

// TestMaildirBadInput: what cannot be delivered is refused permanently and
// writes nothing outside the marker area.
func TestMaildirBadInput(t *testing.T) {
	root := t.TempDir()
	m := newTestMaildir(t, root)
	good := msgFor("b")
	cases := map[string]func(*Message){
		"empty id":            func(m *Message) { m.DeliveryID = "" },
		"empty user":          func(m *Message) { m.Username = "" },
		"dot dot":             func(m *Message) { m.Username = ".." },
		"slash":               func(m *Message) { m.Username = "../etc" },
		"dot":                 func(m *Message) { m.Username = "." },
		"hidden":              func(m *Message) { m.Username = ".postern" },
		"backslash":           func(m *Message) { m.Username = `a\b` },
		"newline":             func(m *Message) { m.Username = "a\nb" },
		"nul":                 func(m *Message) { m.Username = "a\x00b" },
		"space":               func(m *Message) { m.Username = "a b" },
		"not utf-8":           func(m *Message) { m.Username = "a\xffb" },
		"too long":            func(m *Message) { m.Username = strings.Repeat("a", 256) },
		"empty recipient":     func(m *Message) { m.Recipient = "" },
		"recipient injection": func(m *Message) { m.Recipient = "a@b\r\nBcc: x@y" },
		"sender injection":    func(m *Message) { m.MailFrom = "a@b>\r\nX: y" },
		"sender bare LF":      func(m *Message) { m.MailFrom = "a@b\nX: y" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			msg := good
			mutate(&msg)
			err := m.Deliver(context.Background(), msg)
			if err == nil || !IsPermanent(err) {
				t.Fatalf("Deliver = %v, want a permanent error", err)
			}
		})
	}
	entries, _ := os.ReadDir(root)
	for _, e := range entries {
		if e.Name() != ".postern" {
			t.Errorf("bad input left %s in the root", e.Name())
		}
	}
}

// TestMaildirPruneMarkers: markers older than the retention are removed;
// newer ones stay (and still drop duplicates).
func TestMaildirPruneMarkers(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	m := newTestMaildir(t, root)
	for _, id := range []string{"old", "new"} {
		if err := m.Deliver(ctx, msgFor(id)); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(m.markerPath("alice", "old"), past, past); err != nil {
		t.Fatal(err)
	}
	n, err := m.PruneMarkers(ctx, time.Now().Add(-24*time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("PruneMarkers = %d, %v; want 1 removed", n, err)
	}
	if _, err := os.Stat(m.markerPath("alice", "new")); err != nil {
		t.Errorf("recent marker removed: %v", err)
	}
	if err := m.Deliver(ctx, msgFor("new")); err != nil {
		t.Fatal(err)
	}
	if got := mailboxMessages(t, filepath.Join(root, "alice")); len(got) != 2 {
		t.Errorf("%d messages, want 2 (the recent id still deduplicated)", len(got))
	}
}

// TestMaildirRootIsAFile: a root that is not a directory stops NewMaildir.
func TestMaildirRootIsAFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "file")
	os.WriteFile(p, []byte("x"), 0o600)
	if _, err := NewMaildir(MaildirConfig{Root: p}, Options{}); err == nil {
		t.Fatal("NewMaildir on a file succeeded")
	}
}

// TestMaildirUnwritable: a failing write is a temporary error and leaves
// no partial file behind.
func TestMaildirUnwritable(t *testing.T) {
	// A file where new/ should be (permissions would not stop root).
	root := t.TempDir()
	m := newTestMaildir(t, root)
	dir := filepath.Join(root, "alice")
	os.MkdirAll(filepath.Join(dir, "cur"), 0o700)
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o700)
	if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := m.Deliver(context.Background(), msgFor("u-1"))
	if err == nil || IsPermanent(err) {
		t.Fatalf("Deliver into a broken Maildir = %v, want a temporary error", err)
	}
	if tmp := files(t, dir, "tmp"); len(tmp) != 0 {
		t.Errorf("tmp/ = %v, want empty", tmp)
	}
	// Repaired, the same id is delivered.
	os.Remove(filepath.Join(dir, "new"))
	if err := m.Deliver(context.Background(), msgFor("u-1")); err != nil {
		t.Fatal(err)
	}
	if got := mailboxMessages(t, dir); len(got) != 1 || !bytes.Contains([]byte(got[0]), []byte("body of u-1")) {
		t.Errorf("mailbox = %q", got)
	}
}
