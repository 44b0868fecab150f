package delivery_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/services/relay/internal/delivery"
)

// TestConfigLoads reads a delivery section through the real loader: YAML,
// a POSTERN_* override, validation, and a dump that masks the password.
func TestConfigLoads(t *testing.T) {
	type file struct {
		Delivery delivery.Config `yaml:"delivery"`
	}
	path := filepath.Join(t.TempDir(), "relay.yaml")
	yaml := `delivery:
  hostname: relay.hq.example.com
  retry:
    base: 30s
    max_lifetime: 72h
  smarthost:
    host: smtp.isp.example
    port: 465
    tls: tls
    username: org@isp.example
    password: isp-secret-1
  sender_smarthosts:
    - domain: branch.example.org
      host: smtp.other.example
  sites:
    tls: tls
`
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := file{Delivery: delivery.DefaultConfig()}
	if err := config.Load(path, []string{"POSTERN_DELIVERY_SMARTHOST_MAX_SESSIONS=8"}, &cfg); err != nil {
		t.Fatalf("load: %v", err)
	}
	d := cfg.Delivery
	if d.Retry.Base != 30*time.Second || d.Retry.Cap != 4*time.Hour || d.Retry.MaxLifetime != 72*time.Hour {
		t.Errorf("retry %+v: file values over the defaults", d.Retry)
	}
	if d.Smarthost.Port != 465 || d.Smarthost.TLS != "tls" || d.Smarthost.Password.Reveal() != "isp-secret-1" || d.Smarthost.MaxSessions != 8 {
		t.Errorf("smarthost %+v", d.Smarthost)
	}
	if s := d.SenderSmarthosts[0].Smarthost(d.Smarthost); s.Port != 587 || s.TLS != "starttls" || s.MaxSessions != 8 || s.Username != "" {
		t.Errorf("sender smarthost resolves to %+v", s)
	}
	var out bytes.Buffer
	if err := config.Dump(&out, &cfg); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "isp-secret-1") {
		t.Errorf("the dump shows the smarthost password:\n%s", out.String())
	}

	bad := strings.Replace(yaml, "tls: tls\n    username", "tls: none\n    username", 1)
	if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = file{Delivery: delivery.DefaultConfig()}
	err := config.Load(path, nil, &cfg)
	if err == nil || !strings.Contains(err.Error(), "delivery.smarthost.tls") {
		t.Errorf("AUTH over plaintext: err = %v, want one naming delivery.smarthost.tls", err)
	}
	if err != nil && strings.Contains(err.Error(), "isp-secret-1") {
		t.Errorf("the error shows the password: %v", err)
	}
}
