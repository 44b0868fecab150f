package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestBrokerRunsAloneCreatesTheTopicsAndKeepsItsData: `postern broker`
// prints its address, has every Postern topic (with the site's prefix and
// partitions) before a service connects, takes records from any Kafka
// client, stops cleanly on SIGTERM and finds its records again at the next
// start.
func TestBrokerRunsAloneCreatesTheTopicsAndKeepsItsData(t *testing.T) {
	dir := t.TempDir()
	env := []string{"POSTERN_BROKER_LISTEN=127.0.0.1:0", "POSTERN_LOG_FORMAT=json", "POSTERN_BUS_TOPIC_PREFIX=hq", "POSTERN_BUS_PARTITIONS=2"}
	start := func() (*exec.Cmd, string, chan error) {
		cmd := exec.Command(postern(t), "broker")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), env...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr syncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		addr := make(chan string, 1)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if m := listenLine.FindStringSubmatch(sc.Text()); m != nil && m[1] == "broker" {
					addr <- m[2]
				}
			}
			_, _ = io.Copy(io.Discard, stdout)
			done <- cmd.Wait()
		}()
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
			}
		})
		select {
		case a := <-addr:
			return cmd, a, done
		case err := <-done:
			t.Fatalf("postern broker exited: %v\n%s", err, stderr.String())
		case <-time.After(60 * time.Second):
			t.Fatalf("postern broker printed no address\n%s", stderr.String())
		}
		return nil, "", nil
	}
	stop := func(cmd *exec.Cmd, done chan error) {
		t.Helper()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("SIGTERM: exit %v, want a clean exit", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("postern broker did not stop on SIGTERM")
		}
	}

	cmd, addr, done := start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &kafka.Client{Addr: kafka.TCP(addr)}
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	got := map[string]int{}
	for _, tp := range meta.Topics {
		got[tp.Name] = len(tp.Partitions)
	}
	for _, want := range []string{"hq.mail.inbound", "hq.mail.delivery", "hq.mail.status", "hq.mail.deadletter", "hq.directory.changes"} {
		if got[want] != 2 {
			t.Errorf("topic %s has %d partitions, want 2 (topics: %v)", want, got[want], got)
		}
	}
	w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: "hq.mail.deadletter", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, Balancer: &kafka.Hash{}}
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("k"), Value: []byte("kept across restarts")}); err != nil {
		t.Fatalf("produce: %v", err)
	}
	_ = w.Close()
	stop(cmd, done)

	cmd, addr, done = start()
	var values []string
	for p := range 2 {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{addr}, Topic: "hq.mail.deadletter", Partition: p, MaxWait: 100 * time.Millisecond})
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		for {
			m, err := r.ReadMessage(rctx)
			if err != nil {
				break
			}
			values = append(values, string(m.Value))
		}
		rcancel()
		r.Close()
	}
	if !slices.Contains(values, "kept across restarts") {
		t.Errorf("after a restart the topic holds %q, want the record written before", values)
	}
	stop(cmd, done)
}

// TestBrokerRefusesBusBrokers: the command is the broker; a configuration
// that points the bus elsewhere is a mistake, named by its key.
func TestBrokerRefusesBusBrokers(t *testing.T) {
	cmd := exec.Command(postern(t), "broker")
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "POSTERN_BROKER_LISTEN=127.0.0.1:0", "POSTERN_BUS_BROKERS=kafka.example:9092")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "bus.brokers") {
		t.Fatalf("exit %v, want status 2 naming bus.brokers:\n%s", err, out)
	}
}
