package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/passwd"
	"github.com/postern/postern/internal/replica"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/services/relay"
	"github.com/postern/postern/services/router"
)

// startPostern runs Postern's router and relay in this process on the
// single-box defaults (embedded broker with its data on disk, SQLite site
// state) in a temporary directory, with a one-site directory replica
// (bench.example, user bench@ allowed to send out), 127.0.0.0/8 as the
// trusted network (as Postfix's mynetworks) and the sink as smarthost. It
// returns the relay's inbound SMTP address and a stop function.
func startPostern(sinkAddr string) (string, func(), error) {
	dir, err := os.MkdirTemp("", "relay-bench-postern-")
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	fail := func(err error) (string, func(), error) {
		cancel()
		os.RemoveAll(dir)
		return "", nil, err
	}
	common := app.DefaultCommon()
	common.Site = "bench"
	common.Log.Level = "warn"
	common.Broker.Listen = "127.0.0.1:0"
	common.Broker.DataDir = filepath.Join(dir, "broker")
	common.State.SQLitePath = filepath.Join(dir, "state", "site.db")
	rt, err := app.Start(ctx, common, app.Options{Name: "relay-bench", LogOutput: os.Stderr, Needs: app.Needs{Bus: true, State: true}})
	if err != nil {
		return fail(err)
	}
	if err := seedReplica(ctx, rt.State); err != nil {
		return fail(err)
	}

	rcfg := router.DefaultConfig()
	rcfg.HTTP.Listen = "127.0.0.1:0"
	rcfg.ReportingMTA = "postern.bench.invalid"
	rtr, err := router.New(rcfg, rt)
	if err != nil {
		return fail(err)
	}
	host, port, _ := strings.Cut(sinkAddr, ":")
	cfg := relay.DefaultConfig()
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.SMTP.Hostname = "postern.bench.invalid"
	cfg.SMTP.Submission.Listen = ""
	cfg.SMTP.Inbound.Listen = "127.0.0.1:0"
	cfg.SMTP.TLS.DataDir = filepath.Join(dir, "tls")
	cfg.SMTP.TrustedNetworks = []string{"127.0.0.0/8"}
	cfg.SMTP.RateLimits.MessagesPerIPPerMinute = 0
	cfg.SMTP.RateLimits.MessagesPerUserPerHour = 0
	cfg.Delivery.Hostname = "postern.bench.invalid"
	cfg.Delivery.Smarthost.Host = host
	fmt.Sscan(port, &cfg.Delivery.Smarthost.Port)
	cfg.Delivery.Smarthost.TLS = "none"     // the sink is on this machine
	cfg.Delivery.Smarthost.MaxSessions = 20 // as Postfix's smtp_destination_concurrency_limit
	cfg.Mailbox.Maildir.Root = filepath.Join(dir, "mail")
	cfg.DovecotAuth.PasswdFile = filepath.Join(dir, "dovecot", "passwd")
	rly, err := relay.New(cfg, rt)
	if err != nil {
		return fail(err)
	}
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, rt, io.Discard, rtr.Unit(), rly.Unit()) }()
	var addr string
	for i := 0; i < 200 && addr == ""; i++ {
		addr = rly.Addrs()["inbound"]
		time.Sleep(50 * time.Millisecond)
	}
	if addr == "" {
		return fail(fmt.Errorf("the relay did not start its inbound listener"))
	}
	stop := func() {
		cancel()
		<-done
		cctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		_ = rt.Close(cctx)
		os.RemoveAll(dir)
	}
	return addr, stop, nil
}

// seedReplica writes the directory the benchmark needs, as the fetcher's
// AUM client would: site bench with domain bench.example, and the user
// bench@bench.example, allowed to send to the Internet.
func seedReplica(ctx context.Context, st sitestate.Store) error {
	hash, err := passwd.Hash("bench-password")
	if err != nil {
		return err
	}
	site, _ := json.Marshal(replica.Site{ID: "bench", Name: "bench", Domains: []string{"bench.example"}, Version: 1})
	user, _ := json.Marshal(replica.User{ID: "u-bench", Version: 1, Username: "bench", PrimaryAddress: "bench@bench.example", Site: "bench",
		Enabled: true, Permissions: replica.Permissions{InternetSend: true, InternetReceive: true}, PasswordHash: hash})
	err = st.Directory().Apply(ctx, sitestate.ChangeSet{Snapshot: true, Cursor: "1", Put: []sitestate.Entry{
		{Kind: replica.KindSite, ID: "bench", Version: 1, Data: site, Keys: []string{"bench.example"}},
		{Kind: replica.KindUser, ID: "u-bench", Version: 1, Data: user, Keys: []string{"bench", "bench@bench.example"}},
	}})
	if err != nil {
		return err
	}
	return st.Directory().MarkSynced(ctx, "1", time.Now())
}
