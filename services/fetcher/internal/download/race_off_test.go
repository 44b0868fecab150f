//go:build !race

package download

// raceDetector: the tests run under the race detector.
const raceDetector = false
