//go:build race

package e2e

// raceEnabled: the suite runs under the race detector, so the binary under
// test may be built with it too (see raceBinaryEnv).
const raceEnabled = true
