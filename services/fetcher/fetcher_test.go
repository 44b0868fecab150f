package fetcher

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/api/events"
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/testenv"
)

const testToken = "pst_abc_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"

func TestConfigValidate(t *testing.T) {
	if err := config.Validate(new(DefaultConfig())); err != nil {
		t.Fatalf("the default configuration (AUM off: no token) is refused: %v", err)
	}
	c := DefaultConfig()
	c.AUM.URL = ""
	c.AUM.Token = testToken
	if keys := config.Keys(config.Validate(&c)); !slices.Equal(keys, []string{"aum.url"}) {
		t.Errorf("token without url: errors for %v, want [aum.url]", keys)
	}
	c = DefaultConfig()
	c.AUM.Token = "not-a-token"
	c.AUM.Wait = 0
	c.Download.Concurrency = 0
	c.Download.Backoff.Multiplier = 0.5
	keys := config.Keys(config.Validate(&c))
	for _, want := range []string{"aum.token", "aum.wait", "download.concurrency", "download.backoff.multiplier"} {
		if !slices.Contains(keys, want) {
			t.Errorf("no error for %s; got %v", want, keys)
		}
	}
	c = DefaultConfig()
	c.AUM.Token = testToken
	if err := config.Validate(&c); err != nil {
		t.Errorf("AUM on with url and token: %v", err)
	}
}

func startRuntime(t *testing.T) *app.Runtime {
	t.Helper()
	c := app.DefaultCommon()
	c.Site = "hq"
	c.Broker.Listen = "127.0.0.1:0"
	c.Broker.DataDir = filepath.Join(t.TempDir(), "broker")
	c.State.SQLitePath = filepath.Join(t.TempDir(), "state.db")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := app.Start(ctx, c, app.Options{Name: "fetcher", LogOutput: io.Discard, Needs: Needs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Close(context.Background()) })
	return rt
}

func put(t *testing.T, st sitestate.Store, kind, id string, keys []string, obj any) {
	t.Helper()
	data, _ := json.Marshal(obj)
	err := st.Directory().Apply(context.Background(), sitestate.ChangeSet{Put: []sitestate.Entry{{Kind: kind, ID: id, Version: 1, Data: data, Keys: keys}}})
	if err != nil {
		t.Fatal(err)
	}
}

// TestServiceDownloadsAndDeletes runs the whole fetcher as `postern serve`
// does, with the AUM client off (no users service in single-box mode
// without a token): it starts with no account, then polls the account the
// replica holds, publishes its message to mail.inbound, and deletes it from
// Dovecot once mail.status says it was delivered.
func TestServiceDownloadsAndDeletes(t *testing.T) {
	isp := testenv.DovecotUser{Username: "org@isp.test", Password: "isp-secret"}
	dir, err := os.MkdirTemp("/dev/shm", "postern-fetcher-")
	if err != nil {
		dir = ""
	} else {
		t.Cleanup(func() { os.RemoveAll(dir) })
		os.Chmod(dir, 0o755)
	}
	d := testenv.StartDovecot(t, testenv.DovecotOptions{Users: []testenv.DovecotUser{isp}, MailDir: dir})
	t.Cleanup(func() { time.Sleep(300 * time.Millisecond) }) // see download/dovecot_test.go
	rt := startRuntime(t)

	cfg := DefaultConfig()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Download.MinPollInterval = 0
	cfg.Download.RescanInterval = 200 * time.Millisecond
	svc, err := New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range svc.Checks() {
		if c.Name == "directory-replica" {
			t.Error("a replica check without the AUM client")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})

	// The replica gets a user and an account while the fetcher runs.
	put(t, rt.State, replica.KindSite, "s-hq", []string{"example.com"}, replica.Site{ID: "s-hq", Name: "hq", Domains: []string{"example.com"}})
	put(t, rt.State, replica.KindUser, "u-alice", []string{"alice", "alice@example.com"}, replica.User{ID: "u-alice", Username: "alice", PrimaryAddress: "alice@example.com", Enabled: true})
	h, p, _ := net.SplitHostPort(d.POP3Addr)
	port, _ := strconv.Atoi(p)
	put(t, rt.State, replica.KindPOP3Account, "a-isp", []string{"isp"}, replica.POP3Account{ID: "a-isp", Name: "isp", Host: h, Port: port,
		TLS: replica.TLSNone, AllowInsecure: true, Auth: replica.AuthUser, Username: isp.Username, Password: isp.Password,
		Mode: replica.ModeSingle, TargetUser: "u-alice", PollIntervalSeconds: 1, Enabled: true,
		Keep: replica.KeepPolicy{Policy: replica.KeepDelete}})
	msg := []byte("From: someone@example.net\r\nTo: org@isp.test\r\nSubject: hello\r\nMessage-ID: <1@example.net>\r\n\r\n.a dot line\r\nbye\r\n")
	d.DeliverToMaildir(t, isp.Username, msg)

	recs := testenv.Collect(t, rt.Bus, events.TopicInbound, 1, 30*time.Second)
	if len(recs) != 1 {
		t.Fatalf("mail.inbound: %d records, want 1", len(recs))
	}
	in, err := events.DecodeInbound(recs[0].Event())
	if err != nil {
		t.Fatal(err)
	}
	if string(in.Message) != string(msg) || !slices.Equal(in.Recipients, []string{"alice@example.com"}) || in.Source.POP3Account != "a-isp" || in.Site != "hq" {
		t.Fatalf("record %+v", in)
	}
	st := events.Status{InboundID: in.ID, Stage: "relay", Recipient: "alice@example.com", Outcome: events.OutcomeDelivered, At: time.Now(), Source: in.Source}
	rec, err := st.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.Bus.Publish(context.Background(), msgbus.NewMessage(events.TopicStatus, rec)); err != nil {
		t.Fatal(err)
	}
	maildir := d.UserMaildir(isp.Username)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		n := 0
		for _, sub := range []string{"new", "cur"} {
			es, _ := os.ReadDir(filepath.Join(maildir, sub))
			n += len(es)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the delivered message is still in the Maildir after 30s:\n%s", d.Log())
		}
	}
}

// TestServiceStaleReplicaCheck: with the AUM client on and refuse_stale,
// a replica that was never synced makes the fetcher not ready.
func TestServiceStaleReplicaCheck(t *testing.T) {
	rt := startRuntime(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there: the users service is down
	cfg := DefaultConfig()
	cfg.AUM.URL = "http://" + addr
	cfg.AUM.Token = testToken
	cfg.AUM.RefuseStale = true
	svc, err := New(cfg, rt)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, c := range svc.Checks() {
		if c.Name == "directory-replica" {
			found = true
			if err := c.Func(t.Context()); err == nil || !strings.Contains(fmt.Sprint(err), "never synced") {
				t.Errorf("replica check: %v, want never synced", err)
			}
		}
	}
	if !found {
		t.Error("no directory-replica check")
	}
}
