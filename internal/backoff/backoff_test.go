package backoff

import (
	"math"
	"testing"
	"time"
)

func TestExp(t *testing.T) {
	for _, c := range []struct {
		n    int
		want time.Duration
	}{
		{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second},
		{7, 60 * time.Second}, {1000, 60 * time.Second}, {math.MaxInt, 60 * time.Second},
	} {
		if got := Exp(time.Second, time.Minute, 2, c.n); got != c.want {
			t.Errorf("Exp(1s, 1m, 2, %d) = %s, want %s", c.n, got, c.want)
		}
	}
	if got := Exp(time.Second, time.Minute, 1, 50); got != time.Second {
		t.Errorf("multiplier 1: %s, want 1s", got)
	}
}

func TestJitter(t *testing.T) {
	d := 10 * time.Second
	for _, c := range []struct {
		j, u float64
		want time.Duration
	}{
		{0.2, 0.5, d}, {0.2, 0, 8 * time.Second}, {0.2, 1, 12 * time.Second}, {0, 0, d}, {1, 0, 0},
	} {
		if got := Jitter(d, c.j, c.u); got != c.want {
			t.Errorf("Jitter(10s, %v, %v) = %s, want %s", c.j, c.u, got, c.want)
		}
	}
}
