//go:build race

package harness

// raceEnabled: the tests run under the race detector, and so does postern.
const raceEnabled = true
