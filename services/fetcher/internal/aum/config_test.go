package aum

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/config"
)

const goodToken = "pst_0194aaaa-0000-7000-8000-000000000001_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ"

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Token = goodToken
	if err := config.Validate(&good); err != nil {
		t.Fatalf("defaults with a token are refused: %v", err)
	}
	if keys := config.Keys(config.Validate(DefaultConfig())); !slices.Equal(keys, []string{"token"}) {
		t.Errorf("defaults without a token: errors for %v, want [token]", keys)
	}

	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	secretish := "pst_abc_hunter2hunter2"
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		key  string
	}{
		{"no url", func(c *Config) { c.URL = "" }, "url"},
		{"not http", func(c *Config) { c.URL = "ftp://users.example.org" }, "url"},
		{"no host", func(c *Config) { c.URL = "http://" }, "url"},
		{"ends in /v1", func(c *Config) { c.URL = "http://127.0.0.1:8080/v1/" }, "url"},
		{"credentials in url", func(c *Config) { c.URL = "https://agent:pw@users.example.org" }, "url"},
		{"query", func(c *Config) { c.URL = "http://127.0.0.1:8080?x=1" }, "url"},
		{"malformed token", func(c *Config) { c.Token = config.Secret(secretish) }, "token"},
		{"no timeout", func(c *Config) { c.Timeout = 0 }, "timeout"},
		{"wait too short", func(c *Config) { c.Wait = 500 * time.Millisecond }, "wait"},
		{"wait too long", func(c *Config) { c.Wait = 3 * time.Minute }, "wait"},
		{"no max age", func(c *Config) { c.MaxAge = 0 }, "max_age"},
		{"ca file with http", func(c *Config) { c.CAFile = ca }, "ca_file"},
		{"ca file not PEM", func(c *Config) { c.URL = "https://users.example.org"; c.CAFile = ca }, "ca_file"},
		{"ca file missing", func(c *Config) { c.URL = "https://users.example.org"; c.CAFile = ca + ".missing" }, "ca_file"},
	} {
		c := good
		tc.mod(&c)
		err := config.Validate(&c)
		if keys := config.Keys(err); !slices.Equal(keys, []string{tc.key}) {
			t.Errorf("%s: errors for %v, want [%s]: %v", tc.name, keys, tc.key, err)
		}
		if err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), goodToken)) {
			t.Errorf("%s: the error shows a secret: %v", tc.name, err)
		}
	}

	// Under a parent section, the keys are prefixed.
	var parent struct {
		AUM Config `yaml:"aum"`
	}
	parent.AUM = DefaultConfig()
	parent.AUM.Timeout = 0
	if keys := config.Keys(config.Validate(&parent)); !slices.Equal(keys, []string{"aum.token", "aum.timeout"}) {
		t.Errorf("nested: %v", keys)
	}
}

func TestNewRefusesABadConfig(t *testing.T) {
	if _, err := New(DefaultConfig(), nil, Options{}); err == nil || !strings.Contains(err.Error(), "token") {
		t.Errorf("New without a token = %v", err)
	}
}
