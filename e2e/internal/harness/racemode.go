package harness

// RaceEnabled reports whether the tests (and so the postern binary they
// run) are built with the race detector, which makes them several times
// slower: heavy tests scale their load down.
const RaceEnabled = raceEnabled
