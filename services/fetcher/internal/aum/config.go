package aum

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/postern/postern/internal/config"
)

// maxWait is the longest long poll GET /v1/sync accepts (its `wait`
// parameter is at most 120 seconds).
const maxWait = 120 * time.Second

// Config configures the AUM client of one site.
type Config struct {
	URL         string        `yaml:"url" doc:"base URL of the users service's REST API, e.g. http://127.0.0.1:8080 (the client adds /v1/sync); https:// for TLS"`
	Token       config.Secret `yaml:"token" doc:"the site's site_agent token (pst_...), created with: postern tokens add <name> --role site_agent --site <site>. In the fetcher, the AUM client is off while url or token is empty (the replica is then left as it is)"`
	Timeout     time.Duration `yaml:"timeout" doc:"time limit of one request to the users service (a long poll gets wait on top)"`
	Wait        time.Duration `yaml:"wait" doc:"how long one long poll of /v1/sync waits for a change between download cycles (whole seconds, 1s to 120s; the users service may cap it lower)"`
	MaxAge      time.Duration `yaml:"max_age" doc:"a replica not synced for longer than this is stale: reported in the metric postern_directory_replica_age_seconds, and refused with refuse_stale"`
	RefuseStale bool          `yaml:"refuse_stale" doc:"when the users service cannot be reached and the replica is stale (or was never synced), skip the download cycle instead of going on with the last replica"`
	CAFile      string        `yaml:"ca_file" doc:"PEM file of the certificate authorities that sign the users service's certificate (https URL); empty: the system's roots"`
}

// DefaultConfig returns the single-box defaults: the users service on
// 127.0.0.1:8080, 10s per request, 25s long polls, stale after 10 minutes,
// going on with a stale replica. The token has no default.
func DefaultConfig() Config {
	return Config{
		URL:     "http://127.0.0.1:8080",
		Timeout: 10 * time.Second,
		Wait:    25 * time.Second,
		MaxAge:  10 * time.Minute,
	}
}

// Validate checks the configuration; errors are *config.FieldError values
// naming the keys relative to the section. No message repeats the token.
func (c Config) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, config.Errorf(key, format, args...))
	}
	u, err := parseBaseURL(c.URL)
	if err != nil {
		add("url", "%v", err)
	}
	if err := checkToken(c.Token); err != nil {
		add("token", "%v", err)
	}
	if c.Timeout <= 0 {
		add("timeout", "must be positive, got %s", c.Timeout)
	}
	if c.Wait < time.Second || c.Wait > maxWait {
		add("wait", "must be between 1s and %s, got %s", maxWait, c.Wait)
	}
	if c.MaxAge <= 0 {
		add("max_age", "must be positive, got %s", c.MaxAge)
	}
	if c.CAFile != "" {
		if u != nil && u.Scheme != "https" {
			add("ca_file", "is only used with an https:// url")
		} else if _, err := loadRoots(c.CAFile); err != nil {
			add("ca_file", "%v", err)
		}
	}
	return config.Join(errs...)
}

// parseBaseURL checks the users service's base URL: http or https, a host,
// no query, and not already ending in /v1 (the generated client adds it).
func parseBaseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, fmt.Errorf("must be set (the users service's base URL, e.g. http://127.0.0.1:8080)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("is not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: must start with http:// or https://", u.Redacted())
	case u.Host == "":
		return nil, fmt.Errorf("%q: has no host", u.Redacted())
	case u.User != nil:
		return nil, fmt.Errorf("must not carry credentials: the site_agent token goes in token")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%q: must not have a query or a fragment", u.Redacted())
	case strings.HasSuffix(strings.TrimSuffix(u.Path, "/"), "/v1"):
		return nil, fmt.Errorf("%q: must not end in /v1: give the service's base URL, the client adds /v1/sync", u.Redacted())
	}
	return u, nil
}

// checkToken checks the shape of a Postern API token,
// pst_<id>_<43 base64url characters>, without ever quoting it.
func checkToken(s config.Secret) error {
	if !s.IsSet() {
		return fmt.Errorf("must be set: the site's site_agent token (postern tokens add <name> --role site_agent --site <site>)")
	}
	rest, ok := strings.CutPrefix(s.Reveal(), "pst_")
	id, random, found := strings.Cut(rest, "_")
	if !ok || !found || id == "" || len(random) != 43 || strings.ContainsAny(s.Reveal(), " \t\r\n") {
		return fmt.Errorf("is not a Postern API token (pst_<id>_<43 characters>, as `postern tokens add` prints it)")
	}
	return nil
}

// loadRoots reads a PEM bundle of CA certificates.
func loadRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, nil
}
