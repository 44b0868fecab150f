package config

import (
	"strings"
	"testing"
)

func TestIsHostname(t *testing.T) {
	for _, h := range []string{"mx", "mail.example.org", "MX1.Example.org.", "a-b.c_d.example", strings.Repeat("a", 63) + ".example"} {
		if !IsHostname(h) {
			t.Errorf("IsHostname(%q) = false", h)
		}
	}
	for _, h := range []string{"", ".", "a..b", ".example", "-a.example", "a-.example", "a b", "a:25", "é.example",
		strings.Repeat("a", 64) + ".example", strings.Repeat("a.", 127) + "ab"} {
		if IsHostname(h) {
			t.Errorf("IsHostname(%q) = true", h)
		}
	}
}
