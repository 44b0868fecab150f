// Package app is the runtime every Postern service shares: the common
// configuration, the wiring of logging, telemetry, the Kafka bus (or the
// embedded broker), the site state, and the side HTTP server, and the
// lifecycle that runs services until a signal and drains them.
//
// A service's own main and `postern serve` both build a Runtime from the
// common configuration and run services through Run; a service is wired in
// exactly one place, its constructor.
package app

import (
	"regexp"
	"time"

	"github.com/postern/postern/internal/broker"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/logging"
	"github.com/postern/postern/internal/msgbus"
	"github.com/postern/postern/internal/sitestate"
	"github.com/postern/postern/internal/telemetry"
)

// Common is the configuration every service process reads, whether it runs
// one service or all of them.
type Common struct {
	Site            string           `yaml:"site" doc:"name of this site (location), as in the directory; lower-case letters, digits and dashes"`
	Log             logging.Config   `yaml:"log"`
	Telemetry       telemetry.Config `yaml:"telemetry"`
	Bus             msgbus.Config    `yaml:"bus"`
	Broker          broker.Config    `yaml:"broker" doc:"the embedded broker, started when bus.brokers is empty"`
	State           sitestate.Config `yaml:"state"`
	ShutdownTimeout time.Duration    `yaml:"shutdown_timeout" doc:"how long services may drain in-flight work after a stop signal"`
}

// DefaultCommon is the single-box default: embedded broker and SQLite under ./var.
func DefaultCommon() Common {
	return Common{
		Site:            "main",
		Log:             logging.DefaultConfig(),
		Telemetry:       telemetry.DefaultConfig(),
		Bus:             msgbus.DefaultConfig(),
		Broker:          broker.DefaultConfig(),
		State:           sitestate.DefaultConfig(),
		ShutdownTimeout: 30 * time.Second,
	}
}

var siteName = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Validate checks the values that belong to Common itself; the loader
// validates the nested sections.
func (c Common) Validate() error {
	var errs []error
	if !siteName.MatchString(c.Site) {
		errs = append(errs, config.Errorf("site", "%q is not a site name (lower-case letters, digits and dashes, at most 63)", c.Site))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, config.Errorf("shutdown_timeout", "must be positive, got %s", c.ShutdownTimeout))
	}
	return config.Join(errs...)
}

// EmbeddedBroker reports whether this configuration runs the embedded broker.
func (c Common) EmbeddedBroker() bool { return len(c.Bus.Brokers) == 0 }
