// Command fetcher runs the Postern fetcher alone. With bus.brokers empty it starts its
// own embedded broker (for trying it out); a site deployment points
// bus.brokers at the site's Kafka cluster. See the README for configuration.
package main

import (
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/services/fetcher"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Config is the file fetcher reads: the common sections and a "fetcher" section.
type Config struct {
	app.Common `yaml:",inline"`
	Fetcher    fetcher.Config `yaml:"fetcher"`
}

func main() {
	cfg := Config{Common: app.DefaultCommon(), Fetcher: fetcher.DefaultConfig()}
	app.Main(app.Program{
		Name:    "fetcher",
		Version: version,
		Config:  &cfg,
		Common:  func() *app.Common { return &cfg.Common },
		Needs:   func() app.Needs { return fetcher.Needs },
		Units: func(rt *app.Runtime) ([]app.Unit, error) {
			svc, err := fetcher.New(cfg.Fetcher, rt)
			if err != nil {
				return nil, err
			}
			return []app.Unit{svc.Unit()}, nil
		},
	})
}
