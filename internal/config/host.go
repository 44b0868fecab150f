package config

import "strings"

// IsHostname reports whether s is a DNS host name: dot-separated labels of
// 1 to 63 letters, digits, dashes (not first or last) and underscores, at
// most 253 characters, an optional final dot. Services use it to check
// host-name settings (an EHLO name, a smarthost, a Reporting-MTA).
func IsHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(s, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
