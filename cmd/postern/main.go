// Command postern is Postern in one binary: `postern serve` runs every
// service in one process (single-box mode, or one site's subset against a
// real Kafka, Redis and PostgreSQL), and the other commands administer it.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/postern/postern/cmd/postern/internal/admin"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usageHead = `usage: postern <command> [flags]

commands:
  serve              run the services (all four by default) in one process
  broker             run the embedded Kafka-protocol broker alone (for services in separate processes)
  trace <Message-ID> follow a message through a site: origin, routing, every outcome
  config check       load and validate the configuration, print it with secrets masked
  config reference   write the configuration reference (docs/configuration.md)
  version            print the version

administration (over the users service's API):
`

const usageTail = `
Run "postern <command> -h" for a command's flags.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	usage := usageHead + admin.Usage() + usageTail
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if admin.IsCommand(args[0]) {
		return admin.Main(ctx, args, stdout, stderr, version)
	}
	switch args[0] {
	case "serve":
		return serveProgram().Run(ctx, args[1:], stdout, stderr)
	case "broker":
		return brokerProgram().Run(ctx, args[1:], stdout, stderr)
	case "trace":
		return traceCommand(ctx, args[1:], os.Getenv, stdout, stderr)
	case "config":
		return configCommand(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "postern", version)
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "postern: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}
