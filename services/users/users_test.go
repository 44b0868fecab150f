package users

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postern/postern/internal/config"
)

func TestConfigValidateNamesEveryBadKey(t *testing.T) {
	if err := config.Validate(ptr(DefaultConfig())); err != nil {
		t.Fatalf("the default configuration is refused: %v", err)
	}
	c := DefaultConfig()
	c.API.Listen = "8080"
	c.SecretKeys = "k1:not-base64"
	c.BootstrapToken = "hunter2"
	c.Sync.Retain = time.Minute
	c.Sync.Outbox = 0
	err := config.Validate(&c)
	keys := config.Keys(err)
	for _, want := range []string{"api.listen", "secret_keys", "bootstrap_token", "sync.retain", "sync.outbox_poll"} {
		if !slices.Contains(keys, want) {
			t.Errorf("no error for %s; got %v", want, err)
		}
	}
	if err != nil && strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error repeats a secret: %v", err)
	}
}

func ptr[T any](v T) *T { return &v }
