package msgbus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The kill test re-executes the test binary as a consumer process. These
// variables tell the child what to do.
const (
	envChild   = "POSTERN_MSGBUS_TEST_CHILD" // "consumer"
	envBrokers = "POSTERN_MSGBUS_TEST_BROKER"
	envPrefix  = "POSTERN_MSGBUS_TEST_PREFIX"
	envKillAt  = "POSTERN_MSGBUS_TEST_KILL_AT" // SIGKILL before committing the n-th record
)

const (
	killGroup  = "router"
	killIn     = "mail.inbound"
	killOut    = "mail.delivery"
	killInputs = 6
	killAt     = 3
)

func TestMain(m *testing.M) {
	if os.Getenv(envChild) == "consumer" {
		os.Exit(childConsumer())
	}
	os.Exit(m.Run())
}

// routeHandler is the handler of both the child and the parent's second
// consumer: one delivery record per inbound record.
func routeHandler(_ context.Context, rec Record) ([]Message, error) {
	return []Message{{
		Topic: killOut,
		Key:   rec.Key,
		Value: append([]byte("routed:"), rec.Value...),
		Headers: []Header{
			{Key: "source-offset", Value: []byte(fmt.Sprintf("%d/%d", rec.Partition, rec.Offset))},
			{Key: "pid", Value: []byte(strconv.Itoa(os.Getpid()))},
		},
	}}, nil
}

// childConsumer consumes killIn and SIGKILLs its own process once the
// outputs of the killAt-th record are acknowledged, before the commit.
func childConsumer() int {
	killAt, _ := strconv.Atoi(os.Getenv(envKillAt))
	cfg := testConfig([]string{os.Getenv(envBrokers)})
	cfg.TopicPrefix = os.Getenv(envPrefix)
	// testing.Verbose may not be called here: flags are not parsed.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	b, err := New(cfg, Options{Logger: logger})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: New:", err)
		return 2
	}
	var handled atomic.Int64
	testHookBeforeCommit = func(rec Record) {
		if handled.Add(1) == int64(killAt) {
			fmt.Fprintf(os.Stderr, "child: outputs of %d/%d acknowledged; SIGKILL before commit\n", rec.Partition, rec.Offset)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = b.Consume(ctx, Subscription{Group: killGroup, Topic: killIn, Name: "route", Handler: routeHandler})
	fmt.Fprintln(os.Stderr, "child: Consume returned without being killed:", err)
	return 3
}

// TestKillBeforeCommit: a consumer process is killed (SIGKILL) after the
// broker acknowledged what it produced for a record but before it committed
// that record. Another consumer of the group handles the record again, and
// the output topic holds an output for every input: nothing is lost, and
// the only duplicate is the record in flight at the kill.
func TestKillBeforeCommit(t *testing.T) {
	ctx := ctxTimeout(t, 90*time.Second)
	addrs := startBroker(t)
	cfg := testConfig(addrs)
	cfg.TopicPrefix = "hq"
	b := newBus(t, cfg, Options{})
	if err := b.EnsureTopics(ctx, killIn, killOut); err != nil {
		t.Fatalf("EnsureTopics: %v", err)
	}
	for i := range killInputs {
		msg := Message{Topic: killIn, Key: []byte("msg-" + strconv.Itoa(i)), Value: []byte("body " + strconv.Itoa(i))}
		if err := b.Publish(ctx, msg); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}

	// The child consumer, killed before its third commit.
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		envChild+"=consumer", envBrokers+"="+addrs[0], envPrefix+"="+cfg.TopicPrefix,
		envKillAt+"="+strconv.Itoa(killAt))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	t.Logf("child output:\n%s", out.String())
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("child: %v; want it killed by SIGKILL", err)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v; want killed by SIGKILL", exit)
	}

	// The child left killAt outputs, and committed killAt-1 records.
	outTopic, inTopic := b.Topic(killOut), b.Topic(killIn)
	if got := len(topicRecords(t, ctx, addrs[0], outTopic)); got != killAt {
		t.Fatalf("after the kill, %s holds %d records; want %d (the killed record's output was acknowledged)", outTopic, got, killAt)
	}
	sum := int64(0)
	for _, off := range committed(t, ctx, addrs[0], killGroup, inTopic, cfg.Partitions) {
		if off > 0 {
			sum += off
		}
	}
	if sum != killAt-1 {
		t.Fatalf("after the kill, the group committed %d records; want %d (the killed record was not committed)", sum, killAt-1)
	}

	// A second consumer of the same group takes over.
	consumeInBackground(t, b, Subscription{Group: killGroup, Topic: killIn, Name: "route", Handler: routeHandler})
	eventually(t, 60*time.Second, "an output for every input", func() bool {
		return len(topicRecords(t, ctx, addrs[0], outTopic)) >= killInputs+1
	})
	// Every input is committed once the second consumer is done.
	eventually(t, 30*time.Second, "every input committed", func() bool {
		sum := int64(0)
		for _, off := range committed(t, ctx, addrs[0], killGroup, inTopic, cfg.Partitions) {
			sum += max(off, 0)
		}
		return sum == killInputs
	})

	outputs := map[string][]string{} // input key → pids that produced an output
	for _, m := range topicRecords(t, ctx, addrs[0], outTopic) {
		pid, _ := header(m, "pid")
		outputs[string(m.Key)] = append(outputs[string(m.Key)], pid)
	}
	dups := 0
	for i := range killInputs {
		key := "msg-" + strconv.Itoa(i)
		switch n := len(outputs[key]); n {
		case 1:
		case 2:
			dups++
			if outputs[key][0] == outputs[key][1] {
				t.Errorf("%s was handled twice by the same process %s; want once by the killed child and once by the second consumer", key, outputs[key][0])
			}
		default:
			t.Errorf("%s has %d outputs, want 1 (or 2 for the record in flight at the kill)", key, n)
		}
	}
	if dups != 1 {
		t.Errorf("%d inputs were handled twice; want exactly 1, the one the child was killed on (outputs: %v)", dups, outputs)
	}
}
