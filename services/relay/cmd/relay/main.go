// Command relay runs the Postern relay alone. With bus.brokers empty it starts its
// own embedded broker (for trying it out); a site deployment points
// bus.brokers at the site's Kafka cluster. See the README for configuration.
package main

import (
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/services/relay"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Config is the file relay reads: the common sections and a "relay" section.
type Config struct {
	app.Common `yaml:",inline"`
	Relay      relay.Config `yaml:"relay"`
}

func main() {
	cfg := Config{Common: app.DefaultCommon(), Relay: relay.DefaultConfig()}
	app.Main(app.Program{
		Name:    "relay",
		Version: version,
		Config:  &cfg,
		Common:  func() *app.Common { return &cfg.Common },
		Needs:   func() app.Needs { return relay.Needs },
		Units: func(rt *app.Runtime) ([]app.Unit, error) {
			svc, err := relay.New(cfg.Relay, rt)
			if err != nil {
				return nil, err
			}
			return []app.Unit{svc.Unit()}, nil
		},
	})
}
