// Package backoff computes capped exponential waits with jitter, the one
// formula every retry loop of Postern uses (the bus's handler retries, the
// fetcher's failing accounts and AUM polls, the relay's retry tiers).
// The arithmetic is in floating point so that a large attempt number
// neither overflows nor wraps.
package backoff

import (
	"math"
	"time"
)

// Exp returns the wait after failed attempt n (counted from 1):
// initial·multiplierⁿ⁻¹, capped at max. An n below 1 counts as 1.
func Exp(initial, max time.Duration, multiplier float64, n int) time.Duration {
	if n < 1 {
		n = 1
	}
	d := float64(initial) * math.Pow(multiplier, float64(n-1))
	if math.IsNaN(d) || d > float64(max) {
		return max
	}
	return time.Duration(d)
}

// Jitter spreads d by ±j (a fraction of d, 0 to 1) with u, a uniform random
// number in [0,1): u=0.5 leaves d as it is. The result is never negative.
func Jitter(d time.Duration, j, u float64) time.Duration {
	if j <= 0 || d <= 0 {
		return d
	}
	return time.Duration(math.Max(0, float64(d)*(1+j*(2*u-1))))
}
