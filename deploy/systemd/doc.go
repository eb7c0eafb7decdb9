// Package systemd holds tidegate's systemd units, not Go code:
// tidegate.service (Type=notify-reload, systemd 253 or later) and
// tidegate-pre253.service (Type=notify with an ExecReload=, for older
// systemd), with the example /etc/tidegate/tidegate.yaml they run. Its test
// checks each unit with `systemd-analyze verify`, keeps the two units the
// same but for their Type=, and keeps TimeoutStopSec above the drain and app
// stop timeouts of tidegate.yaml.
package systemd
