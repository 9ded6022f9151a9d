//go:build !race

package snowlease

// raceEnabled: built with -race (some tests draw fewer IDs then).
const raceEnabled = false
