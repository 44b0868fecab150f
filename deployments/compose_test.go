package deployments

import (
	"bufio"
	"context"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/postern/postern/internal/app"
	"github.com/postern/postern/internal/config"
	"github.com/postern/postern/services/fetcher"
	"github.com/postern/postern/services/relay"
	"github.com/postern/postern/services/router"
	"github.com/postern/postern/services/users"
)

// composeDirs are the deployments, one docker compose project each.
var composeDirs = []string{"compose/central", "compose/branch"}

// posternDockerfile builds the image every Postern container runs.
const posternDockerfile = "deployments/Dockerfile"

// loadCompose loads dir/compose.yaml the way `docker compose` does with
// dir/.env.example as its .env: interpolation (a required variable missing
// from .env.example is an error), the Compose specification's JSON schema,
// consistency (named volumes and networks declared), paths resolved against
// dir. Every profile is on, so tool services are checked too.
func loadCompose(t *testing.T, dir, file string) (*types.Project, error) {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(abs, file)},
		cli.WithWorkingDirectory(abs),
		cli.WithEnvFiles(filepath.Join(abs, ".env.example")),
		cli.WithDotEnv,
		cli.WithInterpolation(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
		cli.WithProfiles([]string{"*"}),
	)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return opts.LoadProject(ctx)
}

// TestComposeFilesAreValid: each compose file loads with its .env.example,
// passes the schema, and mounts only files that exist.
func TestComposeFilesAreValid(t *testing.T) {
	for _, dir := range composeDirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			p, err := loadCompose(t, dir, "compose.yaml")
			if err != nil {
				t.Fatalf("%s/compose.yaml: %v", dir, err)
			}
			if len(p.Services) < 5 {
				t.Errorf("%s: only %d services: %v", dir, len(p.Services), slices.Sorted(maps.Keys(p.Services)))
			}
			for name, s := range p.Services {
				for _, v := range s.Volumes {
					if v.Type != types.VolumeTypeBind {
						continue
					}
					if _, err := os.Stat(v.Source); err != nil {
						t.Errorf("%s: service %s mounts %s, which does not exist: %v", dir, name, v.Source, err)
					}
				}
				if s.Build != nil {
					df := filepath.Join(s.Build.Context, s.Build.Dockerfile)
					if s.Build.Dockerfile == "" {
						df = filepath.Join(s.Build.Context, "Dockerfile")
					}
					checkDockerfileCopies(t, s.Build.Context, df)
				}
			}
			// Every variable the file uses is in .env.example (and so
			// documented), even those with a default.
			env := readEnvExample(t, dir)
			raw, err := os.ReadFile(filepath.Join(dir, "compose.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range regexp.MustCompile(`\$\{([A-Z0-9_]+)`).FindAllStringSubmatch(string(raw), -1) {
				if _, ok := env[m[1]]; !ok {
					t.Errorf("%s: compose.yaml uses ${%s}, which .env.example does not list", dir, m[1])
				}
			}
		})
	}
}

// TestComposeCheckCatchesSchemaErrors: the loader really validates: a
// misspelt key, a port that is not one, a missing required variable and a
// volume nobody declared are all refused.
func TestComposeCheckCatchesSchemaErrors(t *testing.T) {
	for name, body := range map[string]string{
		"unknown key":       "services:\n  a:\n    image: x\n    entrypiont: [\"a\"]\n",
		"bad port":          "services:\n  a:\n    image: x\n    ports: [\"eighty:80\"]\n",
		"missing variable":  "services:\n  a:\n    image: ${UNSET_IN_ENV_EXAMPLE:?required}\n",
		"undeclared volume": "services:\n  a:\n    image: x\n    volumes: [\"nowhere:/data\"]\n",
		"wrong type":        "services:\n  a:\n    image: x\n    restart: [always]\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "compose.yaml"), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, ".env.example"), []byte("SITE=x\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := loadCompose(t, dir, "compose.yaml"); err == nil {
				t.Errorf("loaded without an error:\n%s", body)
			} else {
				t.Logf("refused: %v", err)
			}
		})
	}
}

// TestComposeRunsBuiltBinaries: every Postern binary a compose file runs is
// one the Dockerfile builds, the Dockerfile builds what `make build` builds,
// and those packages compile into the named binaries. (The image builds with
// CGO_ENABLED=0; Postern has no cgo code, and building with the test's own
// environment reuses its build cache instead of compiling everything again.)
func TestComposeRunsBuiltBinaries(t *testing.T) {
	dockerPkgs := dockerfileBuildList(t)
	makePkgs := makefileBuildList(t)
	if !slices.Equal(dockerPkgs, makePkgs) {
		t.Errorf("the Dockerfile builds %v, `make build` builds %v: keep them the same", dockerPkgs, makePkgs)
	}
	built := map[string]string{} // binary name -> package
	for _, p := range dockerPkgs {
		built[filepath.Base(p)] = p
	}
	named := map[string]bool{}
	for _, dir := range composeDirs {
		p, err := loadCompose(t, dir, "compose.yaml")
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for name, s := range posternServices(t, p) {
			bin := binaryOf(s)
			named[bin] = true
			if _, ok := built[bin]; !ok {
				t.Errorf("%s: service %s runs %q, which the Dockerfile does not build (it builds %v)", dir, name, bin, slices.Sorted(maps.Keys(built)))
			}
		}
	}
	if len(named) < 4 {
		t.Fatalf("the compose files name only %v", named)
	}
	if testing.Short() {
		t.Skip("-short: not compiling the binaries")
	}
	out := t.TempDir()
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-o", out + string(os.PathSeparator)}, dockerPkgs...)...)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", dockerPkgs, err, b)
	}
	for bin := range named {
		exe := bin
		if runtime.GOOS == "windows" {
			exe += ".exe"
		}
		if st, err := os.Stat(filepath.Join(out, exe)); err != nil || st.Size() == 0 {
			t.Errorf("binary %s was not built: %v", bin, err)
		}
	}
}

// TestComposeServiceConfigurations: the Postern configuration each
// container reads (its --config file with the POSTERN_* variables compose
// sets, from .env.example) loads and validates exactly as the binary would
// load it, and Prometheus scrapes each service where it listens.
func TestComposeServiceConfigurations(t *testing.T) {
	for _, dir := range composeDirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			p, err := loadCompose(t, dir, "compose.yaml")
			if err != nil {
				t.Fatal(err)
			}
			listen := map[string]string{} // service -> side server address
			for name, s := range posternServices(t, p) {
				bin := binaryOf(s)
				cfg, side := serviceConfig(bin)
				if cfg == nil {
					if bin != "postern" {
						t.Errorf("%s: service %s runs %s, which this test does not know", dir, name, bin)
					}
					continue
				}
				path := configFile(t, s)
				environ := []string{}
				for k, v := range s.Environment {
					if v != nil {
						environ = append(environ, k+"="+*v)
					}
				}
				if err := config.Load(path, environ, cfg); err != nil {
					t.Errorf("%s: service %s: its configuration (%s with its environment) is not valid:\n%s", dir, name, path, config.ErrorList(err))
					continue
				}
				listen[name] = side()
			}
			checkPrometheusTargets(t, dir, listen)
		})
	}
}

// publicPorts are the container ports a site publishes on every interface:
// the mail the Internet, the users and the other sites send. Every other
// published port (the users API, the OTLP receiver, Grafana, Prometheus)
// has no authentication of its own or carries passwords and tokens over
// plain HTTP, so it is published on 127.0.0.1 unless .env says otherwise;
// Kafka, Redis, PostgreSQL and the side servers are not published at all.
var publicPorts = map[string][]uint32{
	"relay":   {2525, 2587, 2465},   // SMTP (MX), submission, inter-site (mutual TLS)
	"dovecot": {143, 993, 110, 995}, // IMAP, IMAPS, POP3, POP3S
}

// TestComposePublishedPorts: with .env.example, only the mail ports are
// published on every interface, the others on the loopback address.
func TestComposePublishedPorts(t *testing.T) {
	for _, dir := range composeDirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			p, err := loadCompose(t, dir, "compose.yaml")
			if err != nil {
				t.Fatal(err)
			}
			for name, s := range p.Services {
				for _, port := range s.Ports {
					if slices.Contains(publicPorts[name], port.Target) {
						continue
					}
					if ip := net.ParseIP(port.HostIP); ip == nil || !ip.IsLoopback() {
						t.Errorf("%s: service %s publishes port %d on %q; only the mail ports %v go on every interface, the others on 127.0.0.1 by default",
							dir, name, port.Target, port.HostIP, publicPorts)
					}
				}
			}
		})
	}
}

// serviceConfig returns the configuration a Postern binary reads, with its
// defaults (as in services/<name>/cmd/<name>/main.go), and a function giving
// its side server's listen address once loaded; nil for the admin CLI.
func serviceConfig(bin string) (any, func() string) {
	switch bin {
	case "users":
		c := &struct {
			app.Common `yaml:",inline"`
			Users      users.Config `yaml:"users"`
		}{Common: app.DefaultCommon(), Users: users.DefaultConfig()}
		return c, func() string { return c.Users.HTTP.Listen }
	case "fetcher":
		c := &struct {
			app.Common `yaml:",inline"`
			Fetcher    fetcher.Config `yaml:"fetcher"`
		}{Common: app.DefaultCommon(), Fetcher: fetcher.DefaultConfig()}
		return c, func() string { return c.Fetcher.HTTP.Listen }
	case "router":
		c := &struct {
			app.Common `yaml:",inline"`
			Router     router.Config `yaml:"router"`
		}{Common: app.DefaultCommon(), Router: router.DefaultConfig()}
		return c, func() string { return c.Router.HTTP.Listen }
	case "relay":
		c := &struct {
			app.Common `yaml:",inline"`
			Relay      relay.Config `yaml:"relay"`
		}{Common: app.DefaultCommon(), Relay: relay.DefaultConfig()}
		return c, func() string { return c.Relay.HTTP.Listen }
	}
	return nil, nil
}

// checkPrometheusTargets: in a deployment with a prometheus.yml, every
// Postern service is scraped at its side server's port, every target is a
// service of the compose file, and the site label is the .env.example SITE.
func checkPrometheusTargets(t *testing.T, dir string, listen map[string]string) {
	t.Helper()
	path := filepath.Join(dir, "prometheus.yml")
	if _, err := os.Stat(path); err != nil {
		return // a branch: its metrics go to the central collector
	}
	var prom struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string          `yaml:"targets"`
				Labels  map[string]string `yaml:"labels"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, path, &prom)
	site := readEnvExample(t, dir)["SITE"]
	scraped := map[string]bool{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					t.Errorf("%s: job %s: target %q: %v", path, sc.JobName, target, err)
					continue
				}
				addr, ok := listen[host]
				if !ok {
					continue // the collector, Prometheus itself
				}
				scraped[host] = true
				if _, p, _ := net.SplitHostPort(addr); p != port {
					t.Errorf("%s: job %s scrapes %s, but %s's side server listens on %s", path, sc.JobName, target, host, addr)
				}
				if st.Labels["site"] != site {
					t.Errorf("%s: job %s: label site=%q, .env.example has SITE=%s", path, sc.JobName, st.Labels["site"], site)
				}
			}
		}
	}
	for name := range listen {
		if !scraped[name] {
			t.Errorf("%s: Prometheus does not scrape %s", path, name)
		}
	}
}

// posternServices are the services that run the Postern image.
func posternServices(t *testing.T, p *types.Project) map[string]types.ServiceConfig {
	t.Helper()
	out := map[string]types.ServiceConfig{}
	for name, s := range p.Services {
		if s.Build != nil && strings.HasSuffix(filepath.ToSlash(filepath.Join(s.Build.Context, s.Build.Dockerfile)), posternDockerfile) {
			out[name] = s
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no service builds %s", p.Name, posternDockerfile)
	}
	return out
}

// binaryOf is the binary a Postern container runs: its entrypoint, or the
// image's (postern).
func binaryOf(s types.ServiceConfig) string {
	if len(s.Entrypoint) > 0 {
		return filepath.Base(s.Entrypoint[0])
	}
	return "postern"
}

// configFile returns the host file mounted where the container's --config
// argument points.
func configFile(t *testing.T, s types.ServiceConfig) string {
	t.Helper()
	args := append(append([]string{}, s.Entrypoint...), s.Command...)
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("service %s runs %v without --config", s.Name, args)
	}
	for _, v := range s.Volumes {
		if v.Target == args[i+1] && v.Type == types.VolumeTypeBind {
			return v.Source
		}
	}
	t.Fatalf("service %s: nothing is mounted at its --config %s", s.Name, args[i+1])
	return ""
}

// dockerfileBuildList returns the packages the Dockerfile's `go build` builds.
func dockerfileBuildList(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines, then find the go build command.
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "RUN") || !strings.Contains(line, "go build") {
			continue
		}
		return packagesIn(line[strings.Index(line, "go build"):])
	}
	t.Fatal("Dockerfile: no RUN ... go build")
	return nil
}

// makefileBuildList returns the packages of the Makefile's build target.
func makefileBuildList(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	inBuild := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "build:"):
			inBuild = true
		case inBuild && strings.HasPrefix(line, "\t") && strings.Contains(line, " build "):
			return packagesIn(line)
		case inBuild && !strings.HasPrefix(line, "\t"):
			inBuild = false
		}
	}
	t.Fatal("Makefile: no build target with a go build")
	return nil
}

func packagesIn(cmd string) []string {
	var out []string
	for _, f := range strings.Fields(cmd) {
		if strings.HasPrefix(f, "./") {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

// checkDockerfileCopies: every COPY source (not from another stage) exists
// in the build context, every Dockerfile the compose files build exists.
func checkDockerfileCopies(t *testing.T, context, dockerfile string) {
	t.Helper()
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Errorf("Dockerfile %s: %v", dockerfile, err)
		return
	}
	for _, line := range strings.Split(strings.ReplaceAll(string(b), "\\\n", " "), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.EqualFold(f[0], "COPY") {
			continue
		}
		if strings.HasPrefix(f[1], "--from") {
			continue // from another stage
		}
		args := slices.DeleteFunc(f[1:], func(s string) bool { return strings.HasPrefix(s, "--") })
		for _, src := range args[:len(args)-1] {
			matches, _ := filepath.Glob(filepath.Join(context, src))
			if len(matches) == 0 {
				t.Errorf("%s: COPY %s: not in the build context %s", dockerfile, src, context)
			}
		}
	}
}

var envOnce sync.Map

// readEnvExample reads dir/.env.example as docker compose reads a .env file.
func readEnvExample(t *testing.T, dir string) map[string]string {
	t.Helper()
	if v, ok := envOnce.Load(dir); ok {
		return v.(map[string]string)
	}
	env, err := dotenv.GetEnvFromFile(map[string]string{}, []string{filepath.Join(dir, ".env.example")})
	if err != nil {
		t.Fatalf("%s/.env.example: %v", dir, err)
	}
	envOnce.Store(dir, env)
	return env
}
