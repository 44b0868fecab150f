// Package lifecycle handles process signals and goroutines that must not
// take the process down: the first SIGINT/SIGTERM starts a graceful
// shutdown, a second one forces exit.
package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// ForcedExitCode is the exit status when a second signal forces exit.
const ForcedExitCode = 130

// SignalContext returns a context that is cancelled at the first SIGINT or
// SIGTERM, so the process can stop intake and drain. A second signal calls
// exit(ForcedExitCode) at once: the operator asked twice. stop releases the
// signal handlers.
func SignalContext(parent context.Context, log *slog.Logger, exit func(int)) (ctx context.Context, stop func()) {
	if exit == nil {
		exit = os.Exit
	}
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			log.Info("shutting down: stopping intake and draining; signal again to force exit", "signal", sig.String())
			cancel(fmt.Errorf("signal %s", sig))
		case <-done:
			return
		}
		select {
		case sig := <-ch:
			log.Warn("second signal: forcing exit without draining", "signal", sig.String())
			exit(ForcedExitCode)
		case <-done:
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(context.Canceled)
	}
}

// Recover turns a panic in the calling goroutine into an error stored in
// *errp, with the stack logged. Use it as `defer lifecycle.Recover(log, "name", &err)`.
func Recover(log *slog.Logger, what string, errp *error) {
	if r := recover(); r != nil {
		log.Error("panic recovered", "component", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		*errp = fmt.Errorf("%s: panic: %v", what, r)
	}
}
