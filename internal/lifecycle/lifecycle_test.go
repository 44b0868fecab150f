package lifecycle

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFirstSignalCancelsSecondForcesExit(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	exited := make(chan int, 1)
	ctx, stop := SignalContext(context.Background(), log, func(code int) { exited <- code })
	defer stop()

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("first SIGTERM did not cancel the context")
	}
	if cause := context.Cause(ctx); cause == nil || !strings.Contains(cause.Error(), "terminated") {
		t.Errorf("cause = %v, want the signal", cause)
	}
	select {
	case code := <-exited:
		t.Fatalf("exit(%d) after only one signal", code)
	default:
	}

	if err := syscall.Kill(syscall.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-exited:
		if code != ForcedExitCode {
			t.Errorf("exit code %d, want %d", code, ForcedExitCode)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("second signal did not force exit")
	}
}

func TestRecover(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func() (err error) {
		defer Recover(log, "worker", &err)
		panic("boom")
	}
	err := run()
	if err == nil || !strings.Contains(err.Error(), "worker: panic") {
		t.Fatalf("err = %v, want a recovered panic naming the worker", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal("unexpected")
	}
}
