// Command router runs the Postern router alone. With bus.brokers empty it starts its
// own embedded broker (for trying it out); a site deployment points
// bus.brokers at the site's Kafka cluster. See the README for configuration.
package main

import (
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/services/router"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Config is the file router reads: the common sections and a "router" section.
type Config struct {
	app.Common `yaml:",inline"`
	Router     router.Config `yaml:"router"`
}

func main() {
	cfg := Config{Common: app.DefaultCommon(), Router: router.DefaultConfig()}
	app.Main(app.Program{
		Name:    "router",
		Version: version,
		Config:  &cfg,
		Common:  func() *app.Common { return &cfg.Common },
		Needs:   func() app.Needs { return router.Needs },
		Units: func(rt *app.Runtime) ([]app.Unit, error) {
			svc, err := router.New(cfg.Router, rt)
			if err != nil {
				return nil, err
			}
			return []app.Unit{svc.Unit()}, nil
		},
	})
}
