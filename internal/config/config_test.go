package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The test configuration mirrors how services compose theirs: a Common
// section inlined into the service Config, sections from other packages,
// a pointer section, and every field kind the loader supports.

type logConfig struct {
	Level  string `yaml:"level" doc:"minimum level: debug, info, warn or error"`
	Format string `yaml:"format" doc:"json or text"`
}

func (c logConfig) Validate() error {
	var errs []error
	switch c.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, Errorf("level", "must be debug, info, warn or error, not %q", c.Level))
	}
	if c.Format != "json" && c.Format != "text" {
		errs = append(errs, Errorf("format", "must be json or text"))
	}
	return Join(errs...)
}

type retryConfig struct {
	Max     int           `yaml:"max" doc:"attempts before giving up"`
	Backoff time.Duration `yaml:"backoff" doc:"first delay | doubled each time"`
	Factor  float64       `yaml:"factor"`
}

// Validate has a pointer receiver on purpose.
func (c *retryConfig) Validate() error {
	if c.Max < 0 {
		return Errorf("max", "must not be negative")
	}
	return nil
}

type busConfig struct {
	Brokers     []string    `yaml:"brokers" doc:"Kafka bootstrap brokers, host:port"`
	TopicPrefix string      `yaml:"topic_prefix" doc:"prefix of every topic name"`
	Partitions  int         `yaml:"partitions"`
	MaxBytes    int64       `yaml:"max_bytes"`
	TLS         bool        `yaml:"tls"`
	Password    Secret      `yaml:"password" doc:"SASL password"`
	Retry       retryConfig `yaml:"retry"`
}

func (c busConfig) Validate() error {
	var errs []error
	if c.Partitions < 1 {
		errs = append(errs, Errorf("partitions", "must be at least 1"))
	}
	if len(c.Brokers) == 0 {
		errs = append(errs, Errorf("brokers", "must name at least one broker"))
	}
	return Join(errs...)
}

type redisConfig struct {
	Addr     string `yaml:"addr"`
	Password Secret `yaml:"password"`
	DB       int    `yaml:"db"`
}

func (c *redisConfig) Validate() error {
	if c.Addr == "" {
		return Errorf("addr", "is required")
	}
	return nil
}

type stateConfig struct {
	Redis *redisConfig `yaml:"redis"`
}

type Common struct {
	Site            string        `yaml:"site" doc:"name of this site (location)"`
	Log             logConfig     `yaml:"log"`
	Bus             busConfig     `yaml:"bus"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" doc:"how long to drain on shutdown"`
}

func (c Common) Validate() error {
	if c.Site == "" {
		return Errorf("site", "is required")
	}
	return nil
}

type routerSettings struct {
	Workers   int      `yaml:"workers"`
	Domains   []string `yaml:"domains"`
	Ratio     float64  `yaml:"ratio"`
	Limit     uint32   `yaml:"limit"`
	Hidden    string   `yaml:"-"`
	unexposed int      //lint:ignore U1000 present to prove the loader skips unexported fields
}

type testConfig struct {
	Common `yaml:",inline"`
	Router routerSettings `yaml:"router"`
	State  stateConfig    `yaml:"state"`
}

func (c *testConfig) Validate() error {
	if c.Router.Workers > 100 && c.Bus.Partitions < 2 {
		return Errorf("router.workers", "more than 100 workers need at least 2 partitions")
	}
	return nil
}

func defaults() testConfig {
	return testConfig{
		Common: Common{
			Site: "local",
			Log:  logConfig{Level: "info", Format: "json"},
			Bus: busConfig{
				Brokers:     []string{"localhost:9092"},
				TopicPrefix: "mail.",
				Partitions:  3,
				MaxBytes:    1 << 20,
				Retry:       retryConfig{Max: 5, Backoff: 500 * time.Millisecond, Factor: 2},
			},
			ShutdownTimeout: 30 * time.Second,
		},
		Router: routerSettings{Workers: 4, Domains: []string{"example.org"}, Ratio: 0.5, Limit: 10},
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "postern.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// load loads yaml (no file when "") and env over the defaults.
func load(t *testing.T, yaml string, env ...string) (testConfig, error) {
	t.Helper()
	cfg := defaults()
	path := ""
	if yaml != "" {
		path = writeFile(t, yaml)
	}
	err := Load(path, env, &cfg)
	return cfg, err
}

func mustLoad(t *testing.T, yaml string, env ...string) testConfig {
	t.Helper()
	cfg, err := load(t, yaml, env...)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

func TestLoadYAMLOverDefaults(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, got, def testConfig)
	}{
		{
			name: "empty file keeps every default",
			yaml: "# nothing here\n",
			check: func(t *testing.T, got, def testConfig) {
				if !reflect.DeepEqual(got, def) {
					t.Errorf("got %+v, want defaults %+v", got, def)
				}
			},
		},
		{
			name: "one nested key, siblings keep defaults",
			yaml: "bus:\n  partitions: 12\n",
			check: func(t *testing.T, got, def testConfig) {
				want := def
				want.Bus.Partitions = 12
				if !reflect.DeepEqual(got, want) {
					t.Errorf("got %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "inline keys at the top level",
			yaml: "site: ams1\nshutdown_timeout: 1m30s\n",
			check: func(t *testing.T, got, def testConfig) {
				if got.Site != "ams1" || got.ShutdownTimeout != 90*time.Second {
					t.Errorf("site %q timeout %v", got.Site, got.ShutdownTimeout)
				}
				if got.Bus.Partitions != def.Bus.Partitions {
					t.Errorf("bus.partitions changed to %d", got.Bus.Partitions)
				}
			},
		},
		{
			name: "every kind",
			yaml: `
site: ams1
log: {level: debug, format: text}
bus:
  brokers: [k1:9092, k2:9092]
  topic_prefix: prod.
  partitions: 6
  max_bytes: 10485760
  tls: true
  password: "0123 s3cret"
  retry:
    max: 9
    backoff: 2s
    factor: 1.5
shutdown_timeout: 10s
router:
  workers: 16
  domains: []
  ratio: 0.25
  limit: 4000000000
state:
  redis:
    addr: redis:6379
    password: hunter2
`,
			check: func(t *testing.T, got, def testConfig) {
				want := def
				want.Site = "ams1"
				want.Log = logConfig{Level: "debug", Format: "text"}
				want.Bus = busConfig{
					Brokers: []string{"k1:9092", "k2:9092"}, TopicPrefix: "prod.", Partitions: 6,
					MaxBytes: 10 << 20, TLS: true, Password: "0123 s3cret",
					Retry: retryConfig{Max: 9, Backoff: 2 * time.Second, Factor: 1.5},
				}
				want.ShutdownTimeout = 10 * time.Second
				want.Router = routerSettings{Workers: 16, Domains: []string{}, Ratio: 0.25, Limit: 4000000000}
				want.State.Redis = &redisConfig{Addr: "redis:6379", Password: "hunter2"}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("got  %+v\nwant %+v", got, want)
				}
				if got.State.Redis.Password.Reveal() != "hunter2" {
					t.Errorf("secret from YAML reveals %q", got.State.Redis.Password.Reveal())
				}
			},
		},
		{
			name: "list replaces the default, not merged",
			yaml: "router:\n  domains: [a.example]\n",
			check: func(t *testing.T, got, _ testConfig) {
				if !slices.Equal(got.Router.Domains, []string{"a.example"}) {
					t.Errorf("domains %q", got.Router.Domains)
				}
			},
		},
		{
			name: "empty section keeps defaults, empty value zeroes",
			yaml: "bus:\nrouter:\n  domains:\n",
			check: func(t *testing.T, got, def testConfig) {
				if !reflect.DeepEqual(got.Bus, def.Bus) {
					t.Errorf("bus changed: %+v", got.Bus)
				}
				if got.Router.Domains != nil {
					t.Errorf("domains %q, want nil", got.Router.Domains)
				}
			},
		},
		{
			name: "anchors and aliases",
			yaml: "bus:\n  topic_prefix: &p eu.\nrouter:\n  domains: [*p, b.example]\n",
			check: func(t *testing.T, got, _ testConfig) {
				if got.Bus.TopicPrefix != "eu." || !slices.Equal(got.Router.Domains, []string{"eu.", "b.example"}) {
					t.Errorf("prefix %q domains %q", got.Bus.TopicPrefix, got.Router.Domains)
				}
			},
		},
		{
			name: "merge key brings in values, own keys win",
			yaml: "bus:\n  retry:\n    <<: {max: 7, factor: 3}\n    max: 8\n",
			check: func(t *testing.T, got, _ testConfig) {
				if got.Bus.Retry.Max != 8 || got.Bus.Retry.Factor != 3 {
					t.Errorf("retry %+v", got.Bus.Retry)
				}
			},
		},
		{
			name: "null pointer section stays nil",
			yaml: "state:\n  redis: ~\n",
			check: func(t *testing.T, got, _ testConfig) {
				if got.State.Redis != nil {
					t.Errorf("redis %+v", got.State.Redis)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, mustLoad(t, tt.yaml), defaults())
		})
	}
}

func TestLoadEnvOverYAML(t *testing.T) {
	yaml := "site: from-file\nbus:\n  partitions: 12\n  topic_prefix: file.\n"
	cfg := mustLoad(t, yaml,
		"POSTERN_SITE=from-env",
		"POSTERN_BUS_PARTITIONS=24",
		"HOME=/root",            // not ours
		"postern_bus_tls=maybe", // not ours either: the prefix is upper case
	)
	if cfg.Site != "from-env" || cfg.Bus.Partitions != 24 {
		t.Errorf("env did not win: site %q partitions %d", cfg.Site, cfg.Bus.Partitions)
	}
	if cfg.Bus.TopicPrefix != "file." {
		t.Errorf("topic_prefix %q, want the file's", cfg.Bus.TopicPrefix)
	}
	if cfg.Bus.MaxBytes != defaults().Bus.MaxBytes {
		t.Errorf("max_bytes %d, want the default", cfg.Bus.MaxBytes)
	}

	// The last assignment of a variable wins.
	cfg = mustLoad(t, "", "POSTERN_SITE=a", "POSTERN_SITE=b")
	if cfg.Site != "b" {
		t.Errorf("site %q, want b", cfg.Site)
	}
}

func TestLoadEnvKinds(t *testing.T) {
	tests := []struct {
		env  string
		get  func(c testConfig) any
		want any
	}{
		{"POSTERN_SITE= spaced ", func(c testConfig) any { return c.Site }, " spaced "},
		{"POSTERN_SITE=a=b", func(c testConfig) any { return c.Site }, "a=b"},
		{"POSTERN_BUS_PASSWORD=p@ss,word", func(c testConfig) any { return c.Bus.Password.Reveal() }, "p@ss,word"},
		{"POSTERN_BUS_TLS=true", func(c testConfig) any { return c.Bus.TLS }, true},
		{"POSTERN_BUS_TLS=1", func(c testConfig) any { return c.Bus.TLS }, true},
		{"POSTERN_BUS_TLS=F", func(c testConfig) any { return c.Bus.TLS }, false},
		{"POSTERN_BUS_PARTITIONS= 7 ", func(c testConfig) any { return c.Bus.Partitions }, 7},
		{"POSTERN_BUS_PARTITIONS=-1", func(c testConfig) any { return c.Bus.Partitions }, -1},
		{"POSTERN_BUS_MAX_BYTES=9223372036854775807", func(c testConfig) any { return c.Bus.MaxBytes }, int64(1<<63 - 1)},
		{"POSTERN_ROUTER_LIMIT=4294967295", func(c testConfig) any { return c.Router.Limit }, uint32(1<<32 - 1)},
		{"POSTERN_ROUTER_RATIO=0.125", func(c testConfig) any { return c.Router.Ratio }, 0.125},
		{"POSTERN_ROUTER_RATIO=1e3", func(c testConfig) any { return c.Router.Ratio }, 1000.0},
		{"POSTERN_BUS_RETRY_BACKOFF=1m30s", func(c testConfig) any { return c.Bus.Retry.Backoff }, 90 * time.Second},
		{"POSTERN_SHUTDOWN_TIMEOUT=250ms", func(c testConfig) any { return c.ShutdownTimeout }, 250 * time.Millisecond},
		{"POSTERN_BUS_BROKERS=k1:9092, k2:9092 ,k3:9092", func(c testConfig) any { return c.Bus.Brokers }, []string{"k1:9092", "k2:9092", "k3:9092"}},
		{"POSTERN_BUS_BROKERS=solo", func(c testConfig) any { return c.Bus.Brokers }, []string{"solo"}},
		{"POSTERN_ROUTER_DOMAINS=", func(c testConfig) any { return c.Router.Domains }, []string{}},
		{"POSTERN_ROUTER_DOMAINS= , ,", func(c testConfig) any { return c.Router.Domains }, []string{}},
		{"POSTERN_LOG_LEVEL=warn", func(c testConfig) any { return c.Log.Level }, "warn"},
		// A pointer section is allocated to hold the value.
		{"POSTERN_STATE_REDIS_ADDR=redis:6379", func(c testConfig) any { return c.State.Redis.Addr }, "redis:6379"},
		{"POSTERN_STATE_REDIS_PASSWORD=hunter2", func(c testConfig) any { return c.State.Redis.Password.Reveal() }, "hunter2"},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			env := []string{tt.env}
			if strings.HasPrefix(tt.env, "POSTERN_STATE_REDIS_PASSWORD") {
				env = append(env, "POSTERN_STATE_REDIS_ADDR=r:1") // satisfies its Validate
			}
			cfg, err := load(t, "", env...)
			if err != nil && !strings.Contains(tt.env, "PARTITIONS=-1") {
				t.Fatalf("Load: %v", err)
			}
			if got := tt.get(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestLoadIgnoredVariables(t *testing.T) {
	cfg := mustLoad(t, "",
		"POSTERN_CONFIG=/etc/postern.yaml",
		"POSTERN_TOKEN=pst_x",                  // the admin CLI's
		"POSTERN_SERVER=http://127.0.0.1:8080", // the admin CLI's
		"POSTERN_TEST_REDIS=localhost:6379",
		"POSTERN_TEST_ANYTHING_AT_ALL=x",
		"POSTERN_",
		"NOT_POSTERN_SITE=x",
	)
	if !reflect.DeepEqual(cfg, defaults()) {
		t.Errorf("ignored variables changed the configuration: %+v", cfg)
	}
}

func TestLoadFileErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error, "@" stands for the file's path
		keys []string
	}{
		{
			name: "unknown nested key with line and suggestion",
			yaml: "site: x\nbus:\n  partitons: 3\n",
			want: []string{`config @ line 3: unknown key "bus.partitons" (did you mean "bus.partitions"?)`},
			keys: []string{"bus.partitons"},
		},
		{
			name: "unknown top-level key",
			yaml: "routr:\n  workers: 2\n",
			want: []string{`config @ line 1: unknown key "routr" (did you mean "router"?)`},
		},
		{
			name: "unknown key with no near match",
			yaml: "zzzzzzzz: 1\n",
			want: []string{`config @ line 1: unknown key "zzzzzzzz"`},
		},
		{
			name: "yaml:\"-\" and unexported fields are not keys",
			yaml: "router:\n  hidden: x\n  unexposed: 1\n",
			want: []string{`unknown key "router.hidden"`, `unknown key "router.unexposed"`},
		},
		{
			name: "all problems, not just the first",
			yaml: "bus:\n  partitions: many\n  tls: perhaps\nrouter:\n  workers: [1]\n  nope: 1\n",
			want: []string{
				`config @ line 2: bus.partitions: not an integer (got "many")`,
				`config @ line 3: bus.tls: not a boolean (use true or false) (got "perhaps")`,
				`config @ line 5: router.workers: want integer, got a list`,
				`config @ line 6: unknown key "router.nope"`,
			},
			keys: []string{"bus.partitions", "bus.tls", "router.workers", "router.nope"},
		},
		{
			name: "fraction into an integer",
			yaml: "bus:\n  partitions: 1.5\n",
			want: []string{`config @ line 2: bus.partitions: want integer, got "1.5"`},
		},
		{
			name: "quoted number into an integer",
			yaml: "bus:\n  partitions: \"3\"\n",
			want: []string{`bus.partitions: want integer, got string "3"`},
		},
		{
			name: "out of range",
			yaml: "router:\n  limit: 5000000000\n",
			want: []string{`router.limit: out of range (a 32-bit non-negative integer) (got "5000000000")`},
		},
		{
			name: "duration without unit",
			yaml: "shutdown_timeout: 30\n",
			want: []string{`config @ line 1: shutdown_timeout: not a duration (write it like 30s, 5m or 1h30m) (got "30")`},
		},
		{
			name: "section given a value",
			yaml: "bus: kafka:9092\n",
			want: []string{`config @ line 1: bus: this section must be a mapping of keys to values, not "kafka:9092"`},
		},
		{
			name: "list given a mapping",
			yaml: "bus:\n  brokers: {a: b}\n",
			want: []string{`bus.brokers: want list of strings, got a mapping`},
		},
		{
			name: "top level not a mapping",
			yaml: "- a\n- b\n",
			want: []string{`config @ line 1: the file must be a mapping of keys to values, not a list`},
		},
		{
			name: "duplicate key",
			yaml: "site: a\nsite: b\n",
			want: []string{`config @ line 2: key "site" appears twice (first on line 1)`},
		},
		{
			name: "syntax error",
			yaml: "bus:\n  partitions: 3\n broken\n",
			want: []string{`config @ line 2: did not find expected key`},
		},
		{
			name: "two documents",
			yaml: "site: a\n---\nsite: b\n",
			want: []string{`more than one YAML document`},
		},
		{
			name: "secret value not echoed",
			yaml: "bus:\n  password: [hunter2]\n",
			want: []string{`bus.password: want secret, got a list`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaults()
			path := writeFile(t, tt.yaml)
			err := Load(path, nil, &cfg)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tt.want {
				w = strings.ReplaceAll(w, "@", path)
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error shows a secret: %v", err)
			}
			if tt.keys != nil && !slices.Equal(Keys(err), tt.keys) {
				t.Errorf("Keys = %q, want %q", Keys(err), tt.keys)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	cfg := defaults()
	err := Load(filepath.Join(t.TempDir(), "absent.yaml"), nil, &cfg)
	if err == nil || !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("err = %v", err)
	}
}

func TestLoadEnvErrors(t *testing.T) {
	tests := []struct {
		env  []string
		want []string
		keys []string
	}{
		{
			env:  []string{"POSTERN_BUS_PARTITIONS=x"},
			want: []string{`environment POSTERN_BUS_PARTITIONS="x" (bus.partitions): not an integer`},
			keys: []string{"bus.partitions"},
		},
		{
			env:  []string{"POSTERN_BUS_PARTITONS=3"},
			want: []string{`environment POSTERN_BUS_PARTITONS: unknown variable (did you mean POSTERN_BUS_PARTITIONS?)`},
		},
		{
			env:  []string{"POSTERN_NOTHING_LIKE_IT=3"},
			want: []string{`environment POSTERN_NOTHING_LIKE_IT: unknown variable`},
		},
		{
			env:  []string{"POSTERN_BUS=x"}, // a section, not a key
			want: []string{`environment POSTERN_BUS: unknown variable`},
		},
		{
			env: []string{
				"POSTERN_BUS_TLS=maybe",
				"POSTERN_SHUTDOWN_TIMEOUT=30",
				"POSTERN_ROUTER_RATIO=half",
				"POSTERN_ROUTER_LIMIT=-1",
				"POSTERN_BUS_MAX_BYTES=99999999999999999999",
				"POSTERN_ROUTER_WORKERS=1.0",
			},
			want: []string{
				`environment POSTERN_BUS_TLS="maybe" (bus.tls): not a boolean (use true or false)`,
				`environment POSTERN_SHUTDOWN_TIMEOUT="30" (shutdown_timeout): not a duration (write it like 30s, 5m or 1h30m)`,
				`environment POSTERN_ROUTER_RATIO="half" (router.ratio): not a number`,
				`environment POSTERN_ROUTER_LIMIT="-1" (router.limit): not a non-negative integer`,
				`environment POSTERN_BUS_MAX_BYTES="99999999999999999999" (bus.max_bytes): out of range (a 64-bit integer)`,
				`environment POSTERN_ROUTER_WORKERS="1.0" (router.workers): not an integer`,
			},
			keys: []string{"bus.tls", "shutdown_timeout", "router.ratio", "router.limit", "bus.max_bytes", "router.workers"},
		},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.env, " "), func(t *testing.T) {
			_, err := load(t, "", tt.env...)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
				}
			}
			if tt.keys != nil && !slices.Equal(Keys(err), tt.keys) {
				t.Errorf("Keys = %q, want %q", Keys(err), tt.keys)
			}
		})
	}
}

func TestLoadReportsFileAndEnvironmentTogether(t *testing.T) {
	_, err := load(t, "bus:\n  partitons: 1\n", "POSTERN_BUS_TLS=maybe")
	if err == nil {
		t.Fatal("Load succeeded")
	}
	if got := len(flatten(err)); got != 2 {
		t.Errorf("%d problems, want 2:\n%s", got, ErrorList(err))
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(c *testConfig)
		want   []string // keys, in report order
	}{
		{"defaults are valid", func(c *testConfig) {}, nil},
		{
			name: "nested sections keyed in full, children before parents, root last",
			modify: func(c *testConfig) {
				c.Site = ""
				c.Log.Level = "loud"
				c.Log.Format = "xml"
				c.Bus.Partitions = 0
				c.Bus.Brokers = nil
				c.Bus.Retry.Max = -1
				c.Router.Workers = 200
				c.State.Redis = &redisConfig{}
			},
			want: []string{
				"log.level", "log.format", // log
				"bus.retry.max",                 // bus.retry, before bus
				"bus.partitions", "bus.brokers", // bus
				"site",             // Common (inline: no prefix)
				"state.redis.addr", // pointer section
				"router.workers",   // root
			},
		},
		{
			name:   "nil pointer section is not validated",
			modify: func(c *testConfig) { c.State.Redis = nil },
			want:   nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaults()
			tt.modify(&cfg)
			err := Validate(&cfg)
			if got := Keys(err); !slices.Equal(got, tt.want) {
				t.Errorf("keys %q, want %q\n%v", got, tt.want, err)
			}
			// A struct value (not a pointer) is validated the same way,
			// pointer-receiver methods included.
			if got := Keys(Validate(cfg)); !slices.Equal(got, tt.want) {
				t.Errorf("by value: keys %q, want %q", got, tt.want)
			}
			for _, e := range flatten(err) {
				if e == nil {
					continue
				}
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Errorf("%v is not a *FieldError", e)
				}
			}
		})
	}
}

// promoted has no Validate of its own: Common's is promoted to it, and must
// not be reported twice.
type promoted struct {
	Common `yaml:",inline"`
}

func TestValidatePromotedMethodReportedOnce(t *testing.T) {
	err := Validate(&promoted{})
	if got := Keys(err); !slices.Equal(got, []string{"log.level", "log.format", "bus.partitions", "bus.brokers", "site"}) {
		t.Errorf("keys %q", got)
	}
}

type plainErrConfig struct {
	Sub struct {
		N int `yaml:"n"`
	} `yaml:"sub"`
}

func (plainErrConfig) Validate() error { return errors.New("something is off") }

func TestValidatePlainError(t *testing.T) {
	err := Validate(plainErrConfig{})
	if err == nil || err.Error() != "something is off" {
		t.Errorf("err = %v", err)
	}
}

func TestLoadValidationMessages(t *testing.T) {
	path := writeFile(t, "bus:\n  partitions: 0\n")
	cfg := defaults()
	err := Load(path, []string{"POSTERN_LOG_LEVEL=loud"}, &cfg)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	for _, want := range []string{
		"config " + path + ": bus.partitions: must be at least 1",
		"config " + path + `: log.level: must be debug, info, warn or error, not "loud" (set by POSTERN_LOG_LEVEL)`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error\n%v\ndoes not contain\n%s", err, want)
		}
	}
	if got := Keys(err); !slices.Equal(got, []string{"log.level", "bus.partitions"}) {
		t.Errorf("keys %q", got)
	}
	if list := ErrorList(err); !strings.HasPrefix(list, "  - config ") {
		t.Errorf("ErrorList:\n%s", list)
	}

	// Without a file, the messages say "config:".
	_, err = load(t, "", "POSTERN_BUS_PARTITIONS=0")
	if want := "config: bus.partitions: must be at least 1 (set by POSTERN_BUS_PARTITIONS)"; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
}

func TestLoadRejectsNonPointer(t *testing.T) {
	for _, dst := range []any{defaults(), nil, (*testConfig)(nil), new(int)} {
		if err := Load("", nil, dst); err == nil {
			t.Errorf("Load(%T) succeeded", dst)
		}
	}
}

type dupKeys struct {
	A struct {
		X int `yaml:"x"`
	} `yaml:",inline"`
	X int `yaml:"x"`
}

type envClash struct {
	A struct {
		BC int `yaml:"b_c"`
	} `yaml:"a"`
	AB struct {
		C int `yaml:"c"`
	} `yaml:"a_b"`
}

func TestBadConfigTypes(t *testing.T) {
	if err := Load("", nil, &dupKeys{}); err == nil || !strings.Contains(err.Error(), `key "x" is declared twice`) {
		t.Errorf("duplicate keys: %v", err)
	}
	if err := Load("", nil, &envClash{}); err == nil || !strings.Contains(err.Error(), "both map to POSTERN_A_B_C") {
		t.Errorf("env clash: %v", err)
	}
}

type embeddedUnexported struct {
	inner `yaml:",inline"`
}

type inner struct {
	Name string `yaml:"name"`
}

func (i inner) Validate() error {
	if i.Name == "bad" {
		return Errorf("name", "is bad")
	}
	return nil
}

func TestEmbeddedUnexportedInline(t *testing.T) {
	var c embeddedUnexported
	if err := Load(writeFile(t, "name: x\n"), nil, &c); err != nil || c.Name != "x" {
		t.Fatalf("Load: %v, name %q", err, c.Name)
	}
	if err := Load("", []string{"POSTERN_NAME=bad"}, &c); !slices.Equal(Keys(err), []string{"name"}) {
		t.Errorf("err = %v", err)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	cfg := defaults()
	cfg.Bus.Password = "hunter2"
	cfg.State.Redis = &redisConfig{Addr: "r:1", Password: "hunter2"}

	if cfg.Bus.Password.Reveal() != "hunter2" || !cfg.Bus.Password.IsSet() {
		t.Fatal("Reveal lost the value")
	}
	var outputs []string
	for _, format := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10s", "%-3v", "%t"} {
		outputs = append(outputs,
			fmt.Sprintf(format, cfg.Bus.Password),
			fmt.Sprintf(format, cfg.Bus), // a section without pointers, any verb
			fmt.Sprintf(format, []Secret{cfg.Bus.Password}))
	}
	for _, format := range []string{"%v", "%+v", "%#v"} { // see Secret's doc
		outputs = append(outputs, fmt.Sprintf(format, cfg), fmt.Sprintf(format, &cfg), fmt.Sprintf(format, cfg.State))
	}
	if got := fmt.Sprintf("%v|%s|%q|%#v|%d", cfg.Bus.Password, cfg.Bus.Password, cfg.Bus.Password, cfg.Bus.Password, cfg.Bus.Password); got != `********|********|"********"|config.Secret("********")|%!d(config.Secret=********)` {
		t.Errorf("formats: %s", got)
	}
	if got := fmt.Sprintf("[%v]", Secret("")); got != "[]" {
		t.Errorf("empty secret prints %s", got)
	}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, string(js))
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("cfg", "password", cfg.Bus.Password, "cfg", cfg)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("cfg", "password", cfg.Bus.Password)
	outputs = append(outputs, logs.String())
	var dump bytes.Buffer
	if err := Dump(&dump, cfg); err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, dump.String())
	var ref bytes.Buffer
	if err := WriteReference(&ref, []Section{{Title: "All", Value: cfg}}); err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, ref.String(), fmt.Sprint(Reference(cfg)))

	for _, out := range outputs {
		if strings.Contains(out, "hunter2") || strings.Contains(out, fmt.Sprintf("%x", "hunter2")) {
			t.Errorf("secret printed: %s", out)
		}
	}
	if !strings.Contains(dump.String(), `password: '********'`) {
		t.Errorf("dump does not show the mask:\n%s", dump.String())
	}
}

func TestReference(t *testing.T) {
	cfg := defaults()
	cfg.Bus.Password = "hunter2"
	fields := Reference(&cfg)
	byKey := map[string]Field{}
	var keys []string
	for _, f := range fields {
		byKey[f.Key] = f
		keys = append(keys, f.Key)
	}
	wantKeys := []string{
		"site", "log.level", "log.format",
		"bus.brokers", "bus.topic_prefix", "bus.partitions", "bus.max_bytes", "bus.tls", "bus.password",
		"bus.retry.max", "bus.retry.backoff", "bus.retry.factor",
		"shutdown_timeout",
		"router.workers", "router.domains", "router.ratio", "router.limit",
		"state.redis.addr", "state.redis.password", "state.redis.db",
	}
	if !slices.Equal(keys, wantKeys) {
		t.Errorf("keys\n%q\nwant\n%q", keys, wantKeys)
	}
	for _, want := range []Field{
		{"site", "POSTERN_SITE", "string", "local", "name of this site (location)"},
		{"bus.brokers", "POSTERN_BUS_BROKERS", "list of strings", "localhost:9092", "Kafka bootstrap brokers, host:port"},
		{"bus.topic_prefix", "POSTERN_BUS_TOPIC_PREFIX", "string", "mail.", "prefix of every topic name"},
		{"bus.partitions", "POSTERN_BUS_PARTITIONS", "integer", "3", ""},
		{"bus.max_bytes", "POSTERN_BUS_MAX_BYTES", "integer", "1048576", ""},
		{"bus.tls", "POSTERN_BUS_TLS", "boolean", "false", ""},
		{"bus.password", "POSTERN_BUS_PASSWORD", "secret", "********", "SASL password"},
		{"bus.retry.backoff", "POSTERN_BUS_RETRY_BACKOFF", "duration", "500ms", "first delay | doubled each time"},
		{"bus.retry.factor", "POSTERN_BUS_RETRY_FACTOR", "number", "2", ""},
		{"shutdown_timeout", "POSTERN_SHUTDOWN_TIMEOUT", "duration", "30s", "how long to drain on shutdown"},
		{"router.limit", "POSTERN_ROUTER_LIMIT", "non-negative integer", "10", ""},
		{"router.ratio", "POSTERN_ROUTER_RATIO", "number", "0.5", ""},
		{"state.redis.password", "POSTERN_STATE_REDIS_PASSWORD", "secret", "", ""}, // nil section
	} {
		if got := byKey[want.Key]; got != want {
			t.Errorf("got  %+v\nwant %+v", got, want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", time.Second: "1s", time.Minute: "1m", 90 * time.Second: "1m30s",
		time.Hour: "1h", 2*time.Hour + 30*time.Minute: "2h30m", time.Hour + time.Second: "1h0m1s",
		1500 * time.Millisecond: "1.5s", 10 * time.Minute: "10m", -time.Minute: "-1m",
	} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(formatDuration(d)); err != nil || back != d {
			t.Errorf("%q does not parse back to %v", formatDuration(d), d)
		}
	}
}

func TestWriteReference(t *testing.T) {
	def := defaults()
	sections := []Section{
		{Title: "Common settings", Intro: "Every service reads these.", Value: def.Common},
		{Title: "Router", Value: def.Router, Key: "router"},
	}
	var a, b bytes.Buffer
	if err := WriteReference(&a, sections); err != nil {
		t.Fatal(err)
	}
	if err := WriteReference(&b, sections); err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Error("output is not deterministic")
	}
	out := a.String()
	wantPrefix := "## Common settings\n\nEvery service reads these.\n\n" +
		"| Key | Environment | Type | Default | Description |\n" +
		"|-----|-------------|------|---------|-------------|\n" +
		"| `site` | `POSTERN_SITE` | string | `local` | name of this site (location) |\n" +
		"| `log.level` | `POSTERN_LOG_LEVEL` | string | `info` | minimum level: debug, info, warn or error |\n"
	if !strings.HasPrefix(out, wantPrefix) {
		t.Errorf("output starts\n%s\nwant\n%s", out[:min(len(out), len(wantPrefix))], wantPrefix)
	}
	for _, row := range []string{
		"| `bus.retry.backoff` | `POSTERN_BUS_RETRY_BACKOFF` | duration | `500ms` | first delay \\| doubled each time |\n",
		"| `bus.password` | `POSTERN_BUS_PASSWORD` | secret |  | SASL password |\n",
		"| `shutdown_timeout` | `POSTERN_SHUTDOWN_TIMEOUT` | duration | `30s` | how long to drain on shutdown |\n",
		"\n## Router\n\n| Key | Environment | Type | Default | Description |\n",
		"| `router.domains` | `POSTERN_ROUTER_DOMAINS` | list of strings | `example.org` |  |\n",
		"| `router.limit` | `POSTERN_ROUTER_LIMIT` | non-negative integer | `10` |  |\n",
	} {
		if !strings.Contains(out, row) {
			t.Errorf("output lacks row\n%s\n--- output:\n%s", row, out)
		}
	}
	if strings.Contains(out, "`router.router.") || strings.Contains(out, "| `workers` |") {
		t.Errorf("Section.Key not applied:\n%s", out)
	}
}

type fileOnly struct {
	Routes map[string]string `yaml:"routes" doc:"domain to next hop"`
}

func TestFileOnlyKeys(t *testing.T) {
	f := Reference(fileOnly{Routes: map[string]string{"b": "2", "a": "1"}})
	want := []Field{{Key: "routes", Type: "map of string to string", Default: "map[a:1 b:2]", Doc: "domain to next hop"}}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("got %+v", f)
	}
	var c fileOnly
	err := Load("", []string{"POSTERN_ROUTES=a"}, &c)
	if err == nil || !strings.Contains(err.Error(), "routes cannot be set from the environment") {
		t.Errorf("err = %v", err)
	}
	if err := Load(writeFile(t, "routes: {x: y}\n"), nil, &c); err != nil || c.Routes["x"] != "y" {
		t.Errorf("Load: %v, %v", err, c.Routes)
	}
}

func TestDumpRoundTrip(t *testing.T) {
	cfg := defaults()
	cfg.Bus.Password = "hunter2"
	cfg.Bus.Brokers = []string{"a:1", "b:2"}
	cfg.Router.Domains = nil
	cfg.Site = "123" // a string that looks like a number
	cfg.ShutdownTimeout = 90 * time.Minute
	cfg.State.Redis = &redisConfig{Addr: "r:1", Password: "pw", DB: 2}

	var out bytes.Buffer
	if err := Dump(&out, &cfg); err != nil {
		t.Fatal(err)
	}
	dumped := out.String()
	for _, want := range []string{"site: \"123\"\n", "log:\n  level: info\n", "shutdown_timeout: 1h30m\n", "  backoff: 500ms\n"} {
		if !strings.Contains(dumped, want) {
			t.Errorf("dump lacks %q:\n%s", want, dumped)
		}
	}
	if strings.Contains(dumped, "common") {
		t.Errorf("inline struct not flattened:\n%s", dumped)
	}

	var back testConfig // zero: everything must come from the dump
	if err := Load(writeFile(t, dumped), nil, &back); err != nil {
		t.Fatalf("dump does not load back: %v\n%s", err, dumped)
	}
	if back.Bus.Password.Reveal() != "********" || back.State.Redis.Password.Reveal() != "********" {
		t.Errorf("secrets loaded back as %q, %q", back.Bus.Password.Reveal(), back.State.Redis.Password.Reveal())
	}
	back.Bus.Password, back.State.Redis.Password = cfg.Bus.Password, cfg.State.Redis.Password
	if len(back.Router.Domains) == 0 {
		back.Router.Domains = nil // nil is dumped as [] and read back empty
	}
	if !reflect.DeepEqual(back, cfg) {
		t.Errorf("round trip\ngot  %+v\nwant %+v\n%s", back, cfg, dumped)
	}

	// A nil pointer section is dumped as null and loads back as nil.
	cfg.State.Redis = nil
	out.Reset()
	if err := Dump(&out, cfg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "redis: null\n") {
		t.Errorf("nil section:\n%s", out.String())
	}
	back = defaults()
	back.State.Redis = &redisConfig{Addr: "default"}
	if err := Load(writeFile(t, out.String()), nil, &back); err != nil || back.State.Redis != nil {
		t.Errorf("Load: %v, redis %+v", err, back.State.Redis)
	}
}

func TestEditDistanceAndSuggest(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"a", "", 1}, {"kitten", "sitting", 3}, {"partitons", "partitions", 1}} {
		if got := editDistance(tt.a, tt.b); got != tt.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.d)
		}
	}
	if s := suggest("tsl", []string{"tls", "site"}); s != "tls" {
		t.Errorf("suggest = %q", s)
	}
	if s := suggest("x", []string{"site"}); s != "" {
		t.Errorf("suggest = %q", s)
	}
}

func TestLoadAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("router: &a0 {workers: 1}\n")
	for i := 1; i <= 20; i++ {
		fmt.Fprintf(&b, "x%d: &a%d {<<: [", i, i)
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]}\n")
	}
	b.WriteString("<<: [*a20]\n")
	_, err := load(t, b.String())
	if err == nil || !strings.Contains(err.Error(), "too many entries") {
		t.Errorf("err = %v", err)
	}
	if n := len(flatten(err)); n > 25 {
		t.Errorf("%d problems reported; repeats should be reported once", n)
	}
}
