// Package users is the directory service, the AUM source of truth: sites,
// users, groups, POP3 accounts, shared mailboxes, templates, API tokens, the
// audit log, CSV import/export and the /v1/sync change feed the sites pull
// (see ../../README.md and api/openapi/users.yaml). This package builds and
// runs it; cmd/users and `postern serve` both use New.
package users

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/atomicfile"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/opshttp"
	"github.com/postern/postern/services/users/internal/auth"
	"github.com/postern/postern/services/users/internal/directory"
	"github.com/postern/postern/services/users/internal/httpapi"
	"github.com/postern/postern/services/users/internal/outbox"
	"github.com/postern/postern/services/users/internal/store"
)

// Config is the users service's own configuration (the shared part is app.Common).
type Config struct {
	HTTP  opshttp.Config `yaml:"http" doc:"side server of the users service: /healthz, /readyz, /metrics"`
	API   APIConfig      `yaml:"api"`
	Store store.Config   `yaml:"store"`
	// SecretKeys encrypt POP3 passwords at rest.
	SecretKeys     config.Secret `yaml:"secret_keys" doc:"keys that encrypt POP3 passwords at rest, as id:base64(32 bytes), comma-separated; the first encrypts, all decrypt (rotation). Empty: a key is generated once into secret_key_file"`
	SecretKeyFile  string        `yaml:"secret_key_file" doc:"file holding the generated key when secret_keys is empty (mode 0600; back it up with the database)"`
	BootstrapToken config.Secret `yaml:"bootstrap_token" doc:"admin token created at start when no admin token exists, as pst_bootstrap_<43 base64url characters>. Empty: on the very first start a random admin token is created and printed once"`
	Sync           SyncConfig    `yaml:"sync"`
}

// APIConfig is the REST API's listener.
type APIConfig struct {
	Listen        string `yaml:"listen" doc:"address of the REST API (/v1/...)"`
	MaxBodyBytes  int64  `yaml:"max_body_bytes" doc:"largest request body, in bytes (CSV imports)"`
	ImportWorkers int    `yaml:"import_workers" doc:"passwords hashed in parallel during a CSV import (0: one per CPU); each argon2id hash takes 64 MiB"`
}

// SyncConfig tunes the AUM-Sync feed and the change log.
type SyncConfig struct {
	MaxWait time.Duration `yaml:"max_wait" doc:"longest long-poll of GET /v1/sync (the document allows up to 120s)"`
	Retain  time.Duration `yaml:"retain" doc:"how long change-log entries are kept; a site whose cursor is older gets a full snapshot"`
	Compact time.Duration `yaml:"compact_every" doc:"how often old change-log entries are removed"`
	Outbox  time.Duration `yaml:"outbox_poll" doc:"how often the publisher to directory.changes looks for changes when no write wakes it"`
}

// DefaultConfig is the single-box default.
func DefaultConfig() Config {
	return Config{
		HTTP:          opshttp.Config{Listen: "127.0.0.1:9180"},
		API:           APIConfig{Listen: "127.0.0.1:8080", MaxBodyBytes: 32 << 20},
		Store:         store.DefaultConfig(),
		SecretKeyFile: "var/users/secret.key",
		Sync:          SyncConfig{MaxWait: 60 * time.Second, Retain: 30 * 24 * time.Hour, Compact: time.Hour, Outbox: 2 * time.Second},
	}
}

// Validate checks the users service's settings.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.API.Listen); err != nil {
		errs = append(errs, config.Errorf("api.listen", "%q is not host:port", c.API.Listen))
	}
	if c.API.MaxBodyBytes < 1<<20 {
		errs = append(errs, config.Errorf("api.max_body_bytes", "must be at least 1 MiB"))
	}
	if c.API.ImportWorkers < 0 {
		errs = append(errs, config.Errorf("api.import_workers", "must not be negative"))
	}
	if c.SecretKeys.IsSet() {
		if _, err := directory.ParseSecretKeys(c.SecretKeys.Reveal()); err != nil {
			errs = append(errs, config.Errorf("secret_keys", "%v", err))
		}
	} else if c.SecretKeyFile == "" {
		errs = append(errs, config.Errorf("secret_key_file", "must be set when secret_keys is empty"))
	}
	if c.BootstrapToken.IsSet() {
		if id, ok := auth.TokenID(c.BootstrapToken.Reveal()); !ok || id != "bootstrap" {
			errs = append(errs, config.Errorf("bootstrap_token", "must be pst_bootstrap_ followed by 43 base64url characters (e.g. from: head -c32 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-43)"))
		}
	}
	if c.Sync.MaxWait <= 0 || c.Sync.MaxWait > 120*time.Second {
		errs = append(errs, config.Errorf("sync.max_wait", "must be between 1s and 120s"))
	}
	if c.Sync.Retain < time.Hour {
		errs = append(errs, config.Errorf("sync.retain", "must be at least 1h"))
	}
	if c.Sync.Compact <= 0 {
		errs = append(errs, config.Errorf("sync.compact_every", "must be positive"))
	}
	if c.Sync.Outbox <= 0 {
		errs = append(errs, config.Errorf("sync.outbox_poll", "must be positive"))
	}
	return config.Join(errs...)
}

// Needs is what the users service needs from the shared runtime: the bus,
// for directory.changes.
var Needs = app.Needs{Bus: true}

// Service is the running users service.
type Service struct {
	cfg   Config
	rt    *app.Runtime
	log   *slog.Logger
	store store.Store
	api   *http.Server
	ln    net.Listener
}

var _ app.Service = (*Service)(nil)
var _ app.Checker = (*Service)(nil)

// New opens the directory database (applying migrations), makes sure an
// admin token exists, binds the REST API's listener and builds the service
// on a runtime started with (at least) Needs.
func New(cfg Config, rt *app.Runtime) (_ *Service, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := rt.Logger.With("service", "users")

	st, err := store.Open(ctx, cfg.Store)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = st.Close()
		}
	}()
	box, err := secretBox(ctx, cfg, st, log)
	if err != nil {
		return nil, err
	}
	if err := bootstrap(ctx, st, cfg.BootstrapToken, rt, log); err != nil {
		return nil, err
	}

	handler, err := httpapi.New(httpapi.Options{
		Store:         st,
		Box:           box,
		Logger:        log,
		SyncMaxWait:   cfg.Sync.MaxWait,
		MaxBodyBytes:  cfg.API.MaxBodyBytes,
		ImportWorkers: cfg.API.ImportWorkers,
	})
	if err != nil {
		return nil, fmt.Errorf("users api: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.API.Listen)
	if err != nil {
		return nil, fmt.Errorf("users api: listen on %s: %w", cfg.API.Listen, err)
	}
	s := &Service{
		cfg:   cfg,
		rt:    rt,
		log:   log,
		store: st,
		ln:    ln,
		api: &http.Server{
			Handler:           handler,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       5 * time.Minute, // CSV uploads
			WriteTimeout:      cfg.Sync.MaxWait + time.Minute,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}
	fmt.Fprintf(rt.Out, "%-8s http://%s/v1  (users REST API; OpenAPI document: api/openapi/users.yaml)\n", "api", ln.Addr())
	return s, nil
}

// Name is "users".
func (s *Service) Name() string { return "users" }

// APIAddr is the address the REST API listens on.
func (s *Service) APIAddr() string { return s.ln.Addr().String() }

// Unit is the service with its side HTTP server, for app.Run.
func (s *Service) Unit() app.Unit { return app.Unit{Service: s, HTTP: s.cfg.HTTP} }

// Checks are the users service's readiness checks: the database and the broker.
func (s *Service) Checks() []opshttp.Check {
	return append([]opshttp.Check{{Name: "database", Func: s.store.Ping}}, s.rt.BusCheck()...)
}

// Run serves the API, publishes the change log to directory.changes and
// compacts it, until ctx is cancelled; then it stops accepting requests,
// lets those in flight finish (long polls included) and closes the database.
func (s *Service) Run(ctx context.Context) error {
	defer s.store.Close()
	errc := make(chan error, 1)
	go func() {
		if err := s.api.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	bg, stopBG := context.WithCancel(ctx)
	defer stopBG()
	done := make(chan struct{}, 2)
	if s.rt.Bus != nil {
		ob := &outbox.Outbox{Log: s.store, Bus: s.rt.Bus, Logger: s.log.With("component", "outbox"), Poll: s.cfg.Sync.Outbox}
		go func() { _ = ob.Run(bg); done <- struct{}{} }()
	} else {
		done <- struct{}{}
	}
	go func() { s.compact(bg); done <- struct{}{} }()
	s.log.Info("users api listening", "addr", s.APIAddr())

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("users api: %w", err)
	}
	stopBG()
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.rt.Common.ShutdownTimeout)
	defer cancel()
	if serr := s.api.Shutdown(shutdownCtx); serr != nil {
		s.log.Warn("users api: requests still running at the drain deadline", "error", serr)
	}
	<-done
	<-done
	return err
}

// compact removes change-log entries older than the retention, hourly.
func (s *Service) compact(ctx context.Context) {
	t := time.NewTicker(s.cfg.Sync.Compact)
	defer t.Stop()
	for {
		last, err := s.store.LastSeq(ctx)
		if err == nil {
			var n int64
			n, err = s.store.Compact(ctx, last, time.Now().Add(-s.cfg.Sync.Retain))
			if n > 0 {
				s.log.Info("change log compacted", "removed", n)
			}
		}
		if err != nil && ctx.Err() == nil {
			s.log.Warn("compacting the change log failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// secretBox builds the POP3 password box from secret_keys, or from the key
// file, generating the file on the very first start: when the directory
// holds no sealed POP3 password yet. A missing key file while sealed
// passwords exist is an error (a new key could not open them: the file
// must be restored from the backup). Then it reports the passwords that
// the box does not seal with its current key (SecretBox.NeedsRotation):
// those an older configured key opens, and those no key opens, which
// /v1/sync sends without their password.
func secretBox(ctx context.Context, cfg Config, st store.Store, log *slog.Logger) (*directory.SecretBox, error) {
	sealed, err := st.SealedPOP3Passwords(ctx)
	if err != nil {
		return nil, fmt.Errorf("secret keys: %w", err)
	}
	spec := cfg.SecretKeys.Reveal()
	if spec == "" {
		b, err := os.ReadFile(cfg.SecretKeyFile)
		switch {
		case errors.Is(err, os.ErrNotExist) && len(sealed) > 0:
			return nil, fmt.Errorf("secret_key_file: %s does not exist, but the directory holds %d sealed POP3 password(s) (key ids %s) that only the lost key opens: restore the file from the backup made with the database, or set secret_keys",
				cfg.SecretKeyFile, len(sealed), strings.Join(sealedKeyIDs(sealed), ", "))
		case errors.Is(err, os.ErrNotExist):
			if spec, err = newKeyFile(cfg.SecretKeyFile); err != nil {
				return nil, fmt.Errorf("secret_key_file: %w", err)
			}
			log.Warn("generated the key that encrypts POP3 passwords; back it up with the database", "secret_key_file", cfg.SecretKeyFile)
		case err != nil:
			return nil, fmt.Errorf("secret_key_file: %w", err)
		default:
			spec = strings.TrimSpace(string(b))
		}
	}
	keys, err := directory.ParseSecretKeys(spec)
	if err != nil {
		return nil, fmt.Errorf("secret keys: %w", err)
	}
	box, err := directory.NewSecretBox(keys)
	if err != nil {
		return nil, err
	}
	reportRotation(box, sealed, log)
	return box, nil
}

// newKeyFile writes a new random key to path (mode 0600) and returns it.
// The file appears whole (internal/atomicfile writes it under a temporary
// name) and only if path still does not exist: a key file another
// process wrote meanwhile is never replaced.
func newKeyFile(path string) (string, error) {
	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return "", err
	}
	spec := "k" + time.Now().UTC().Format("20060102") + ":" + base64.StdEncoding.EncodeToString(key[:])
	clear(key[:])
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	tmp := path + ".new-" + uuid.NewString()
	if err := atomicfile.WriteFile(tmp, []byte(spec+"\n"), 0o600); err != nil {
		return "", err
	}
	err := os.Link(tmp, path) // fails when path exists
	_ = os.Remove(tmp)
	if errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("%s appeared while a new key was being written; start again to use it", path)
	}
	if err != nil {
		return "", err
	}
	d, err := os.Open(dir)
	if err != nil {
		return "", err
	}
	defer d.Close()
	return spec, d.Sync()
}

// sealedKeyIDs lists the ids of the keys that sealed passwords, sorted.
func sealedKeyIDs(sealed map[string]string) []string {
	var ids []string
	for _, s := range sealed {
		id, err := directory.SealedKeyID(s)
		if err != nil {
			id = "(malformed)"
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// reportRotation logs the sealed POP3 passwords that box does not seal
// with its current key: opened by an older key (keep it configured until
// those passwords are set again), or by none (the accounts get no password
// through /v1/sync until it is set again or its key configured).
func reportRotation(box *directory.SecretBox, sealed map[string]string, log *slog.Logger) {
	var old, lost []string
	for id, s := range sealed {
		if !box.NeedsRotation(s) {
			continue
		}
		if _, err := box.Open(s); err != nil {
			lost = append(lost, id)
		} else {
			old = append(old, id)
		}
	}
	slices.Sort(old)
	slices.Sort(lost)
	if len(old) > 0 {
		log.Info("POP3 passwords sealed with an older key: keep it in secret_keys until they are set again", "current_key_id", box.CurrentKeyID(), "pop3_account_ids", old)
	}
	if len(lost) > 0 {
		log.Warn("POP3 passwords no configured key opens: /v1/sync sends these accounts without a password until it is set again or its key configured",
			"pop3_account_ids", lost, "key_ids", sealedKeyIDs(pick(sealed, lost)))
	}
}

func pick(m map[string]string, keys []string) map[string]string {
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		out[k] = m[k]
	}
	return out
}

// bootstrap makes sure an administrator can get in: the configured bootstrap
// token when no admin token exists, or on a directory without any token a
// random admin token printed once.
func bootstrap(ctx context.Context, st store.Store, configured config.Secret, rt *app.Runtime, log *slog.Logger) error {
	admins, _, _, err := st.ListTokens(ctx, store.TokenFilter{Page: store.Page{Limit: 1}, Role: directory.RoleAdmin})
	if err != nil {
		return fmt.Errorf("bootstrap token: %w", err)
	}
	if len(admins) > 0 {
		return nil
	}
	var secret, id string
	if configured.IsSet() {
		secret, id = configured.Reveal(), "bootstrap"
	} else {
		_, _, total, err := st.ListTokens(ctx, store.TokenFilter{Page: store.Page{Limit: 1}})
		if err != nil {
			return fmt.Errorf("bootstrap token: %w", err)
		}
		if total > 0 {
			log.Warn("no admin token exists; set users.bootstrap_token to create one")
			return nil
		}
		id = uuid.Must(uuid.NewV7()).String()
		if secret, _, err = auth.NewSecret(id); err != nil {
			return err
		}
	}
	tok := directory.Token{Meta: directory.Meta{ID: id}, Name: "bootstrap admin", Role: directory.RoleAdmin, SecretHash: auth.HashSecret(secret)}
	err = st.Update(ctx, func(tx store.Tx) error {
		if err := tx.CreateToken(ctx, &tok); err != nil {
			return err
		}
		return tx.Audit(ctx, &directory.AuditEntry{Actor: "postern (first start)", Action: "token.create", TargetKind: directory.KindToken, TargetID: tok.ID, Diff: directory.Diff(nil, tok)})
	})
	if err != nil {
		return fmt.Errorf("bootstrap token: %w", err)
	}
	if configured.IsSet() {
		log.Info("created the admin token from users.bootstrap_token", "token_id", tok.ID)
		return nil
	}
	fmt.Fprintf(rt.Out, "\nadmin token (shown once; keep it — it is stored only as a hash):\n\n    %s\n\n", secret)
	log.Info("created a bootstrap admin token and printed it once on standard output", "token_id", tok.ID)
	return nil
}
