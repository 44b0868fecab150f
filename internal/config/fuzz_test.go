package config

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoadEnv feeds an arbitrary value to the environment variable of every
// field kind: Load must never panic, and a value it accepts must be one the
// operator wrote.
func FuzzLoadEnv(f *testing.F) {
	for _, seed := range []string{
		"", " ", ",", "0", "-1", "1e309", "NaN", "true", "30s", "-5m", "1h30m",
		"a,b, c", "9223372036854775808", "0x10", "\x00", "☃", "1_000", "+3", ".5",
	} {
		f.Add(seed)
	}
	vars := []string{}
	for _, fld := range Reference(defaults()) {
		vars = append(vars, fld.Env)
	}
	f.Fuzz(func(t *testing.T, value string) {
		for _, name := range vars {
			cfg := defaults()
			err := Load("", []string{name + "=" + value}, &cfg)
			if err == nil {
				continue
			}
			msg := err.Error()
			if !strings.Contains(msg, name) && !strings.HasPrefix(msg, "config: ") {
				t.Errorf("%s=%q: error does not name the variable: %v", name, value, err)
			}
			if strings.Contains(name, "PASSWORD") && value != "" && strings.Contains(msg, value) && len(value) > 3 {
				t.Errorf("%s=%q: error shows the secret: %v", name, value, err)
			}
		}
		cfg := defaults()
		if err := Load("", []string{"POSTERN_BUS_BROKERS=" + value}, &cfg); err == nil {
			for _, b := range cfg.Bus.Brokers {
				if b == "" || b != strings.TrimSpace(b) || strings.Contains(b, ",") {
					t.Errorf("brokers from %q: item %q", value, b)
				}
			}
		}
	})
}

// FuzzLoadYAML feeds arbitrary files to Load: it must never panic, and what
// it accepts must dump and load back.
func FuzzLoadYAML(f *testing.F) {
	for _, seed := range []string{
		"", "site: x\n", "bus:\n  partitions: 2\n", "bus: [1]\n", "<<: {site: x}\n",
		"a: &a {b: *a}\n", "state:\n  redis: {addr: r}\n", "router: {domains: [a, b]}\n",
		"shutdown_timeout: 1h\n", "---\n---\n", "!!binary aGk=\n", "bus:\n  <<: [{tls: true}, {partitions: 4}]\n",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "fuzz.yaml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := defaults()
		if err := Load(path, nil, &cfg); err != nil {
			return
		}
		var out bytes.Buffer
		if err := Dump(&out, cfg); err != nil {
			t.Fatalf("Dump: %v", err)
		}
		if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
		var back testConfig
		if err := Load(path, nil, &back); err != nil {
			t.Fatalf("dump of an accepted file does not load back: %v\n%s", err, out.String())
		}
	})
}
