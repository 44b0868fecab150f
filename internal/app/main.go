package app

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/internal/lifecycle"
)

// Program describes a process: its configuration and the services it runs.
// Both a service's own binary and `postern serve` are Programs, so they
// share flags, configuration loading, signals and shutdown.
type Program struct {
	Name    string         // "router", "postern", ...
	Version string         // build version
	Config  any            // pointer to the configuration struct, holding its defaults
	Common  func() *Common // the Common section inside Config
	Needs   func() Needs   // what the runtime must start (decided after the configuration is read)
	// Units builds the services (through their constructors) on the runtime.
	Units func(rt *Runtime) ([]Unit, error)
}

// Main runs p with the process's arguments and exits with its status.
func Main(p Program) {
	os.Exit(p.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// Run parses args (--config FILE; default $POSTERN_CONFIG), loads and
// validates the configuration, starts the runtime and the services, and
// blocks until a signal. It returns the exit status: 0 after a clean stop,
// 1 on a failure, 2 on bad usage or configuration.
func (p Program) Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(p.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", os.Getenv("POSTERN_CONFIG"), "YAML configuration `file` (POSTERN_* environment variables override it)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", p.Name, fs.Arg(0))
		return 2
	}
	if err := config.Load(*path, os.Environ(), p.Config); err != nil {
		fmt.Fprintf(stderr, "%s: configuration is not valid:\n%s\n", p.Name, config.ErrorList(err))
		return 2
	}
	common := p.Common()

	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	rt, err := Start(startCtx, *common, Options{Name: p.Name, Version: p.Version, LogOutput: stderr, Out: stdout, Needs: p.Needs()})
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "%s: start: %v\n", p.Name, err)
		return 1
	}
	sigCtx, stop := lifecycle.SignalContext(ctx, rt.Logger, nil)
	defer stop()

	status := 0
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := rt.Close(closeCtx); err != nil {
			rt.Logger.Error("close", "error", err)
		}
		rt.Logger.Info("stopped")
	}()

	fmt.Fprintf(stdout, "Postern %s %s — site %q\n", p.Name, p.Version, common.Site)
	if rt.Broker != nil {
		fmt.Fprintf(stdout, "%-8s %s  (embedded Kafka-protocol broker, data in %s)\n", "broker", rt.Broker.Addrs()[0], common.Broker.DataDir)
	} else if rt.Bus != nil {
		fmt.Fprintf(stdout, "%-8s %v  (Kafka cluster)\n", "broker", common.Bus.Brokers)
	}
	if rt.State != nil {
		fmt.Fprintf(stdout, "%-8s %s\n", "state", describeState(common))
	}
	units, err := p.Units(rt)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", p.Name, err)
		return 1
	}
	if err := Run(sigCtx, rt, stdout, units...); err != nil {
		rt.Logger.Error("stopped on error", "error", err)
		status = 1
	}
	return status
}

func describeState(c *Common) string {
	if c.State.Backend == "redis" {
		return "redis " + c.State.Redis.Addr + " (site state)"
	}
	return "sqlite " + c.State.SQLitePath + " (site state)"
}
