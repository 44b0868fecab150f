package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// The administration commands (cmd/postern/internal/admin, tested there)
// are reached from the top-level dispatch and listed in the usage.
func TestAdminCommandsAreDispatched(t *testing.T) {
	t.Setenv("POSTERN_TOKEN", "")
	for _, tc := range []struct {
		args      []string
		code      int
		out, errs string
	}{
		{args: []string{"help"}, code: 0, out: "pop3-accounts"},
		{args: []string{"users"}, code: 2, errs: "usage: postern users <command>"},
		{args: []string{"sites", "list"}, code: 2, errs: "no API token: give --token or set POSTERN_TOKEN"},
		{args: []string{"frobnicate"}, code: 2, errs: `unknown command "frobnicate"`},
	} {
		var out, errs bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errs)
		if code != tc.code || !strings.Contains(out.String(), tc.out) || !strings.Contains(errs.String(), tc.errs) {
			t.Errorf("postern %s: exit %d (want %d)\nstdout: %s\nstderr: %s", strings.Join(tc.args, " "), code, tc.code, out.String(), errs.String())
		}
	}
}
