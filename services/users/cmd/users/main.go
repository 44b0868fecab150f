// Command users runs the Postern users alone. With bus.brokers empty it starts its
// own embedded broker (for trying it out); a site deployment points
// bus.brokers at the site's Kafka cluster. See the README for configuration.
package main

import (
	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/services/users"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Config is the file users reads: the common sections and a "users" section.
type Config struct {
	app.Common `yaml:",inline"`
	Users      users.Config `yaml:"users"`
}

func main() {
	cfg := Config{Common: app.DefaultCommon(), Users: users.DefaultConfig()}
	app.Main(app.Program{
		Name:    "users",
		Version: version,
		Config:  &cfg,
		Common:  func() *app.Common { return &cfg.Common },
		Needs:   func() app.Needs { return users.Needs },
		Units: func(rt *app.Runtime) ([]app.Unit, error) {
			svc, err := users.New(cfg.Users, rt)
			if err != nil {
				return nil, err
			}
			return []app.Unit{svc.Unit()}, nil
		},
	})
}
