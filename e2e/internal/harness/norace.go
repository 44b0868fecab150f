//go:build !race

package harness

// raceEnabled: the tests run without the race detector.
const raceEnabled = false
