package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/postern/postern/internal/config"
)

//go:generate go run . config reference -o ../../docs/configuration.md

const referenceIntro = `Every key can be set in the YAML file given with --config (or $POSTERN_CONFIG) ` +
	`and overridden by its environment variable. ` + "`postern serve`" + ` reads all of them; a service's own ` +
	`binary (cmd/users, cmd/fetcher, cmd/router, cmd/relay) reads the common keys and its own section. ` +
	`This file is generated from the configuration structs by ` + "`make generate`" + `; do not edit it by hand.`

func configCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, "usage: postern config check [--config FILE] | postern config reference [-o FILE]\n")
		return 2
	}
	fs := flag.NewFlagSet("postern config "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch args[0] {
	case "check":
		path := fs.String("config", os.Getenv("POSTERN_CONFIG"), "YAML configuration `file`")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		cfg := DefaultServeConfig()
		if err := config.Load(*path, os.Environ(), &cfg); err != nil {
			fmt.Fprintf(stderr, "postern: configuration is not valid:\n%s\n", config.ErrorList(err))
			return 2
		}
		if err := config.Dump(stdout, &cfg); err != nil {
			fmt.Fprintf(stderr, "postern: %v\n", err)
			return 1
		}
		return 0
	case "reference":
		out := fs.String("o", "", "write to `file` instead of standard output")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		var buf bytes.Buffer
		err := config.WriteReference(&buf, []config.Section{{
			Title: "Postern configuration reference",
			Intro: referenceIntro,
			Value: DefaultServeConfig(),
		}})
		if err != nil {
			fmt.Fprintf(stderr, "postern: %v\n", err)
			return 1
		}
		if *out == "" {
			_, err = stdout.Write(buf.Bytes())
		} else {
			err = os.WriteFile(*out, buf.Bytes(), 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "postern: %v\n", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(stderr, "postern config: unknown command %q\n", args[0])
		return 2
	}
}
