package main

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/services/fetcher"
	"github.com/postern/postern/services/relay"
	"github.com/postern/postern/services/router"
	"github.com/postern/postern/services/users"
)

// serviceNames are the services `postern serve` can run, in start order.
var serviceNames = []string{"users", "fetcher", "router", "relay"}

// ServeConfig is the configuration of `postern serve`: the common sections
// and one section per service.
type ServeConfig struct {
	app.Common `yaml:",inline"`
	Services   []string       `yaml:"services" doc:"the services this process runs: users, fetcher, router, relay"`
	Users      users.Config   `yaml:"users"`
	Fetcher    fetcher.Config `yaml:"fetcher"`
	Router     router.Config  `yaml:"router"`
	Relay      relay.Config   `yaml:"relay"`
}

// DefaultServeConfig is single-box mode: all four services, the embedded
// broker on 127.0.0.1:19092 with its data in ./var/broker, SQLite in ./var.
func DefaultServeConfig() ServeConfig {
	c := ServeConfig{
		Common:   app.DefaultCommon(),
		Services: slices.Clone(serviceNames),
		Users:    users.DefaultConfig(),
		Fetcher:  fetcher.DefaultConfig(),
		Router:   router.DefaultConfig(),
		Relay:    relay.DefaultConfig(),
	}
	c.Broker.Listen = "127.0.0.1:19092"
	return c
}

// Validate checks the service list.
func (c ServeConfig) Validate() error {
	if len(c.Services) == 0 {
		return config.Errorf("services", "is empty: name at least one of %v", serviceNames)
	}
	var errs []error
	seen := map[string]bool{}
	for _, s := range c.Services {
		switch {
		case !slices.Contains(serviceNames, s):
			errs = append(errs, config.Errorf("services", "unknown service %q (known: %v)", s, serviceNames))
		case seen[s]:
			errs = append(errs, config.Errorf("services", "%q named twice", s))
		}
		seen[s] = true
	}
	return config.Join(errs...)
}

func (c ServeConfig) runs(name string) bool { return slices.Contains(c.Services, name) }

func serveProgram() app.Program {
	cfg := DefaultServeConfig()
	return app.Program{
		Name:    "postern",
		Version: version,
		Config:  &cfg,
		Common:  func() *app.Common { return &cfg.Common },
		Needs: func() app.Needs {
			var n app.Needs
			for _, need := range []struct {
				name string
				n    app.Needs
			}{{"users", users.Needs}, {"fetcher", fetcher.Needs}, {"router", router.Needs}, {"relay", relay.Needs}} {
				if cfg.runs(need.name) {
					n.Bus = n.Bus || need.n.Bus
					n.State = n.State || need.n.State
				}
			}
			return n
		},
		Units: func(rt *app.Runtime) ([]app.Unit, error) { return serveUnits(cfg, rt) },
	}
}

// serveUnits builds each configured service through its package's
// constructor — the same one its own binary uses.
func serveUnits(cfg ServeConfig, rt *app.Runtime) ([]app.Unit, error) {
	var (
		units     []app.Unit
		usersSvc  *users.Service
		agentNote string
	)
	for _, name := range serviceNames {
		if !cfg.runs(name) {
			continue
		}
		var (
			u   app.Unit
			err error
		)
		switch name {
		case "users":
			if usersSvc, err = users.New(cfg.Users, rt); err == nil {
				u = usersSvc.Unit()
			}
		case "fetcher":
			if usersSvc != nil && !cfg.Fetcher.AUM.Token.IsSet() {
				if err = localAUM(&cfg, usersSvc); err != nil {
					break
				}
				agentNote = cfg.Fetcher.AUM.URL
			}
			var s *fetcher.Service
			if s, err = fetcher.New(cfg.Fetcher, rt); err == nil {
				u = s.Unit()
			}
		case "router":
			var s *router.Service
			if s, err = router.New(cfg.Router, rt); err == nil {
				u = s.Unit()
			}
		case "relay":
			var s *relay.Service
			if s, err = relay.New(cfg.Relay, rt); err == nil {
				u = s.Unit()
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		units = append(units, u)
	}
	if agentNote != "" {
		fmt.Fprintf(rt.Out, "%-11s %s syncs site %s (token in %s)\n", "directory", agentNote, cfg.Site, agentTokenFile(cfg))
	}
	return units, nil
}

// localAUM points the fetcher of a single box at the users service in the
// same process, with a site_agent token the users service keeps for it:
// no token to create and paste, no restart. It applies when
// fetcher.aum.token is empty; a configured token (for another users
// service) is left alone.
func localAUM(cfg *ServeConfig, u *users.Service) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	secret, err := u.LocalSiteAgent(ctx, cfg.Site, agentTokenFile(*cfg))
	if err != nil {
		return err
	}
	cfg.Fetcher.AUM.URL = "http://" + u.APIAddr()
	cfg.Fetcher.AUM.Token = secret
	return nil
}

// agentTokenFile is where the single box keeps its fetcher's token: beside
// the key that encrypts POP3 passwords, under the users service's data.
func agentTokenFile(cfg ServeConfig) string {
	return filepath.Join(filepath.Dir(cfg.Users.SecretKeyFile), "site-agent-"+cfg.Site+".token")
}
