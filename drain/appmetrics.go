package drain

import "github.com/prometheus/client_golang/prometheus"

// The supervised app's metrics. They are read from the Child's own state at
// scrape time, the state /status shows, so the two never disagree.
var (
	appUpDesc = prometheus.NewDesc("tidegate_app_up",
		"1 while the supervised app's process runs, else 0 (exited, waiting to be restarted, stopped).",
		nil, nil)
	appRestartsDesc = prometheus.NewDesc("tidegate_app_restarts_total",
		"Times the supervised app was restarted after it exited on its own.",
		nil, nil)
	appLastExitDesc = prometheus.NewDesc("tidegate_app_last_exit_code",
		"Exit code of the supervised app's last run to end (128+signal number if a signal killed it, as shells report); -1 before any run has ended.",
		nil, nil)
)

// appMetricNames names them in the registration error.
const appMetricNames = "tidegate_app_up, tidegate_app_restarts_total, tidegate_app_last_exit_code"

// appCollector exports a Child's metrics.
type appCollector struct{ c *Child }

func (a appCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- appUpDesc
	ch <- appRestartsDesc
	ch <- appLastExitDesc
}

func (a appCollector) Collect(ch chan<- prometheus.Metric) {
	a.c.mu.Lock()
	up, restarts, last := 0.0, float64(a.c.restarts), float64(a.c.lastCode)
	if a.c.running {
		up = 1
	}
	a.c.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(appUpDesc, prometheus.GaugeValue, up)
	ch <- prometheus.MustNewConstMetric(appRestartsDesc, prometheus.CounterValue, restarts)
	ch <- prometheus.MustNewConstMetric(appLastExitDesc, prometheus.GaugeValue, last)
}
