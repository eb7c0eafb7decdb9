package main

import (
	"os"
	"time"
)

// othersMeter measures the CPU time that processes other than the harness
// and its descendants (the app, the proxy, the load generators) take on the
// machine during a run: on a shared machine, a run with much of it is
// suspect.
type othersMeter struct {
	busy, mine int64 // clock ticks: the machine's, and the harness tree's
	at         time.Time
}

func startOthersMeter() (othersMeter, error) {
	busy, mine, err := othersSample()
	return othersMeter{busy: busy, mine: mine, at: time.Now()}, err
}

// cpus returns the average number of CPUs that other processes kept busy
// since the meter started.
func (m othersMeter) cpus(clkTck int64) (float64, error) {
	busy, mine, err := othersSample()
	if err != nil {
		return 0, err
	}
	others := float64((busy-m.busy)-(mine-m.mine)) / float64(clkTck)
	return max(0, others/time.Since(m.at).Seconds()), nil
}

// othersSample returns the machine's busy ticks and the harness tree's:
// the CPU time of its live processes, plus that of the exited children
// they waited for (the load generators, once they are done).
func othersSample() (busy, mine int64, err error) {
	u, err := sampleTree(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	busy, err = hostBusy()
	return busy, u.Ticks + u.ChildTicks, err
}
