package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/tidegate/tidegate/healthz"
	"github.com/tidegate/tidegate/proxy"
)

// usageError is bad input from the operator: the command exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// rawFlag records what a flag was given, unparsed, so that flags can be
// applied after the file and the environment (precedence: flag > env >
// file > default).
type rawFlag struct {
	vals   []string
	isBool bool
}

func (r *rawFlag) String() string     { return strings.Join(r.vals, ",") }
func (r *rawFlag) Set(s string) error { r.vals = append(r.vals, s); return nil }
func (r *rawFlag) IsBoolFlag() bool   { return r.isBool }

// loaded is a Config and where each of its values came from.
type loaded struct {
	cfg           Config
	origin        map[string]string // setting key → "--flag", "TIDEGATE_X", "config file F", "default"
	fileProbes    []healthz.Spec    // the YAML "probes" list
	appProbes     []healthz.Spec    // --app-probes (TIDEGATE_APP_PROBES), added to fileProbes
	probes        []healthz.Spec    // every probe, validated
	fileListeners []listenerSpec    // the YAML "listeners" list
	listeners     []listenerSpec    // every public listener, validated

	// What the config was loaded from, so that a reload (SIGHUP) reads
	// the same flags, environment and file again.
	args   []string
	getenv func(string) string
}

// loadConfig builds the effective Config of `tidegate run` from args, the
// environment and the config file named by --config or TIDEGATE_CONFIG.
// flag.ErrHelp means the operator asked for --help. Any other error is a
// usageError that names the offending value and where it came from.
func loadConfig(args []string, getenv func(string) string) (l *loaded, err error) {
	defer func() { err = redactErr(err) }() // errors quote values: no URL password in them
	table := settings()
	fs := flag.NewFlagSet("tidegate run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	raw := make(map[string]*rawFlag, len(table))
	for _, s := range table {
		raw[s.flag] = &rawFlag{isBool: s.bool}
		fs.Var(raw[s.flag], s.flag, s.usage)
	}
	configPath := fs.String("config", "", "YAML file with settings")
	allArgs := slices.Clone(args)
	var appCmd []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, appCmd = args[:i], args[i+1:]
		if len(appCmd) == 0 {
			return nil, usagef("nothing after --: give the app's command, as in tidegate run [flags] -- /app/server --port 3000")
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{flagHint(err, table)}
	}
	if fs.NArg() > 0 {
		if i := len(args) - fs.NArg() - 1; i >= 0 {
			if name := strings.TrimLeft(args[i], "-"); raw[name] != nil && raw[name].isBool {
				return nil, usagef("--%s takes its value after '=': write --%s=%s", name, name, fs.Arg(0))
			}
		}
		return nil, usagef("unexpected argument %q: flags come first, and the app's command after -- (see tidegate run --help)", fs.Arg(0))
	}

	l = &loaded{origin: make(map[string]string, len(table)), args: allArgs, getenv: getenv}
	for _, s := range table {
		if err := s.set(&l.cfg, splitList(s, s.def)); err != nil {
			return nil, fmt.Errorf("default of %s: %w", s.key, err) // a bug, not bad input
		}
		l.origin[s.key] = "default"
	}

	path, pathFrom := *configPath, "--config"
	if path == "" {
		path, pathFrom = getenv("TIDEGATE_CONFIG"), "TIDEGATE_CONFIG"
	}
	if path != "" {
		if err := l.applyFile(table, path); err != nil {
			return nil, usagef("%s %s: %w", pathFrom, path, err)
		}
	}
	for _, s := range table {
		name := envName(s.flag)
		if v, ok := lookupEnv(getenv, name); ok {
			if err := s.set(&l.cfg, splitList(s, v)); err != nil {
				return nil, usagef("%s: %w", name, err)
			}
			l.origin[s.key] = name
		}
	}
	for _, s := range table {
		if r := raw[s.flag]; len(r.vals) > 0 {
			if err := s.set(&l.cfg, r.vals); err != nil {
				return nil, usagef("--%s: %w", s.flag, err)
			}
			l.origin[s.key] = "--" + s.flag
		}
	}
	l.cfg.App.Command = appCmd
	if err := l.validate(table); err != nil {
		return nil, usageError{err}
	}
	return l, nil
}

// lookupEnv treats an empty variable as unset, as Kubernetes users expect of
// `value: ""`.
func lookupEnv(getenv func(string) string, name string) (string, bool) {
	v := getenv(name)
	return v, v != ""
}

func splitList(s setting, v string) []string {
	if !s.list {
		return []string{v}
	}
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// applyFile reads a YAML config file over l.cfg. Unknown keys are errors,
// with the nearest known key as a hint.
func (l *loaded) applyFile(table []setting, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("cannot read: %w", errors.Unwrap(err))
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("not valid YAML: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var root any
	if err := dec.Decode(&root); err != nil {
		return fmt.Errorf("not valid YAML: %w", err)
	}
	if root == nil {
		return nil // an empty file
	}
	m, ok := root.(map[string]any)
	if !ok {
		return fmt.Errorf("the top level must be a mapping of settings, like \"listen: :8080\"")
	}
	byKey := make(map[string]setting, len(table))
	for _, s := range table {
		byKey[s.key] = s
	}
	return l.applyMap(byKey, "", m)
}

func (l *loaded) applyMap(byKey map[string]setting, prefix string, m map[string]any) error {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		key, v := prefix+k, m[k]
		s, isSetting := byKey[key]
		if !isSetting && key == "upstream" { // shorthand: "upstream: host:port"
			if _, isMap := v.(map[string]any); !isMap {
				s, isSetting = byKey["upstream.address"], true
			}
		}
		switch sub, isMap := v.(map[string]any); {
		case key == "listeners":
			specs, err := parseListenerList(v)
			if err != nil {
				return err
			}
			l.fileListeners = specs
		case key == "probes":
			specs, err := parseProbeList(v, "probes")
			if err != nil {
				return err
			}
			l.fileProbes = specs
		case key == "app_probes" && isList(v):
			js, err := json.Marshal(v) // a YAML list: the same as its JSON text
			if err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			l.cfg.AppProbes = string(js)
			l.origin[key] = "config file"
		case isSetting:
			vals, err := yamlValues(v, s.list)
			if err == nil {
				err = s.set(&l.cfg, vals)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
			l.origin[s.key] = "config file"
		case isMap && isSection(byKey, key):
			if err := l.applyMap(byKey, key+".", sub); err != nil {
				return err
			}
		default:
			return unknownKey(byKey, key)
		}
	}
	return nil
}

// flagHint turns the flag package's "flag provided but not defined: -x"
// into a message that suggests the nearest real flag.
func flagHint(err error, table []setting) error {
	const undefined = "flag provided but not defined: -"
	msg := err.Error()
	if !strings.HasPrefix(msg, undefined) {
		return err
	}
	name := strings.TrimPrefix(msg, undefined)
	best, bestD := "", 4
	for _, s := range append(table, setting{flag: "config"}) {
		if d := editDistance(name, s.flag); d < bestD {
			best, bestD = s.flag, d
		}
	}
	if best != "" {
		return fmt.Errorf("unknown flag --%s (did you mean --%s?)", name, best)
	}
	return fmt.Errorf("unknown flag --%s (see tidegate run --help)", name)
}

func isList(v any) bool { _, ok := v.([]any); return ok }

func isSection(byKey map[string]setting, key string) bool {
	for k := range byKey {
		if strings.HasPrefix(k, key+".") {
			return true
		}
	}
	return false
}

func unknownKey(byKey map[string]setting, key string) error {
	best, bestD := "", 4
	for k := range byKey {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Errorf("unknown key %q (did you mean %q?)", key, best)
	}
	return fmt.Errorf("unknown key %q (see tidegate run --help for the keys)", key)
}

// yamlValues turns a YAML scalar, or a list of scalars for list settings,
// into the strings a setting parses. YAML 1.1 reads a bare off/no as false:
// it comes back as "off".
func yamlValues(v any, list bool) ([]string, error) {
	if items, ok := v.([]any); ok {
		if !list {
			return nil, fmt.Errorf("takes one value, not a list")
		}
		out := make([]string, 0, len(items))
		for _, it := range items {
			s, err := yamlScalar(it)
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
		return out, nil
	}
	s, err := yamlScalar(v)
	if err != nil {
		return nil, err
	}
	return []string{s}, nil
}

func yamlScalar(v any) (string, error) {
	switch t := v.(type) {
	case string:
		return t, nil
	case json.Number:
		return t.String(), nil
	case bool:
		if t {
			return "true", nil
		}
		return off, nil
	case nil:
		return "", fmt.Errorf("has no value")
	default:
		return "", fmt.Errorf("takes a single value, not a %T", v)
	}
}

// validate checks the merged config; each error names the value and where it
// came from.
func (l *loaded) validate(table []setting) error {
	for _, s := range table {
		if s.check == nil {
			continue
		}
		if err := s.check(&l.cfg); err != nil {
			return fmt.Errorf("%s: %w", l.describe(s), err)
		}
	}
	c := &l.cfg
	if c.Server.MaxHeaderBytes == 0 {
		return fmt.Errorf("%s: must be more than 0", l.describeKey(table, "server.max_header_bytes"))
	}
	if c.Server.MaxHeaderBytes > 16<<20 {
		return fmt.Errorf("%s: %s is more than the 16MiB a header block may take", l.describeKey(table, "server.max_header_bytes"), formatBytes(c.Server.MaxHeaderBytes))
	}
	labels, err := l.resolveListeners(table)
	if err != nil {
		return err
	}
	type listener struct{ key, addr string }
	var ls []listener
	for i, pl := range l.listeners {
		ls = append(ls, listener{labels[i], pl.Address})
	}
	for _, x := range []listener{{"health_listen", c.HealthListen}, {"admin_listen", c.AdminListen}, {"grpc_health_listen", c.GRPCHealthListen}, {"metrics_listen", c.MetricsListen}} {
		x.key = l.describeKey(table, x.key)
		ls = append(ls, x)
	}
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			if a.addr != off && b.addr != off && sameListenAddr(a.addr, b.addr) {
				return fmt.Errorf("%s and %s are both %q: each listener needs its own port", a.key, b.key, a.addr)
			}
		}
	}
	if err := checkAdminListen(c.AdminListen, c.AdminListenPublic); err != nil {
		return fmt.Errorf("%s: %w", l.describeKey(table, "admin_listen"), err)
	}
	if c.Drain.Delay > c.Drain.Timeout {
		return fmt.Errorf("%s %s is longer than %s %s: the drain would be cut before load balancers notice",
			l.describeKey(table, "drain.delay"), formatDuration(c.Drain.Delay), l.describeKey(table, "drain.timeout"), formatDuration(c.Drain.Timeout))
	}
	if err := l.validateApp(table); err != nil {
		return err
	}
	if l.appProbes, err = parseAppProbes(c.AppProbes); err != nil {
		return fmt.Errorf("%s: %w", l.describeKey(table, "app_probes"), err)
	}
	if l.probes, err = l.probeSpecs(); err != nil {
		return err
	}
	return nil
}

// resolveListeners decides the public listeners: --listen/--protocol from
// flags or env win over a YAML listeners list, which wins over the listen
// key and the default. Each gets a name, a protocol and an upstream. It
// returns, per listener, where it came from, for error messages.
func (l *loaded) resolveListeners(table []setting) ([]string, error) {
	c := &l.cfg
	listenFrom := l.describeKey(table, "listen")
	fromCLI := strings.HasPrefix(l.origin["listen"], "--") || strings.HasPrefix(l.origin["listen"], "TIDEGATE_")
	var labels []string
	switch {
	case len(l.fileListeners) > 0 && !fromCLI:
		if l.origin["listen"] == "config file" || l.origin["protocol"] == "config file" {
			return nil, fmt.Errorf("config file: give either listen/protocol or a listeners list, not both")
		}
		if o := l.origin["protocol"]; o != "default" {
			return nil, fmt.Errorf("%s applies to --listen addresses; the config file's listeners set their own protocol", o)
		}
		l.listeners = append([]listenerSpec(nil), l.fileListeners...)
		for i := range l.listeners {
			labels = append(labels, fmt.Sprintf("config file listeners[%d]", i))
		}
	default:
		if len(c.Listen) == 0 {
			return nil, fmt.Errorf("%s: no public listener: give an address, like :8080", listenFrom)
		}
		if len(c.Protocol) != 1 && len(c.Protocol) != len(c.Listen) {
			return nil, fmt.Errorf("%d %s values for %d %s addresses: give one for all, or one per address",
				len(c.Protocol), l.describeKey(table, "protocol"), len(c.Listen), listenFrom)
		}
		l.listeners = nil
		for i, addr := range c.Listen {
			proto := c.Protocol[0]
			if len(c.Protocol) > 1 {
				proto = c.Protocol[i]
			}
			l.listeners = append(l.listeners, listenerSpec{Address: addr, Protocol: proto})
			labels = append(labels, listenFrom)
		}
	}
	names := map[string]bool{}
	for i := range l.listeners {
		pl, label := &l.listeners[i], labels[i]
		if pl.Protocol == "" {
			pl.Protocol = "http"
		}
		if pl.Name == "" {
			pl.Name = pl.Protocol + "-" + fmt.Sprint(i+1)
			if len(l.listeners) == 1 {
				pl.Name = "public"
			}
		}
		if names[pl.Name] {
			return nil, fmt.Errorf("%s: listener name %q is used twice", label, pl.Name)
		}
		names[pl.Name] = true
		if err := oneOf("http", "tcp")(pl.Protocol); err != nil {
			return nil, fmt.Errorf("%s: protocol %w", label, err)
		}
		if err := listenAddr(false)(pl.Address); err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		if pl.TLS != nil {
			if pl.Protocol != "http" {
				return nil, fmt.Errorf("%s: tls is for http listeners; a tcp listener passes TLS through as bytes", label)
			}
			if pl.TLS.Cert == "" || pl.TLS.Key == "" {
				return nil, fmt.Errorf("%s: tls needs both cert and key files", label)
			}
			if _, err := proxy.LoadTLS(proxy.TLSOptions{CertFile: pl.TLS.Cert, KeyFile: pl.TLS.Key}); err != nil {
				return nil, fmt.Errorf("%s: %w", label, err)
			}
		}
		upFrom := label + " upstream"
		if pl.Upstream == "" {
			pl.Upstream, upFrom = c.Upstream.Address, l.describeKey(table, "upstream.address")
		}
		if pl.Upstream == "" {
			return nil, fmt.Errorf("%s: no upstream: tell tidegate where the app listens with --upstream host:port (or TIDEGATE_UPSTREAM, or upstream: in the config file)", upFrom)
		}
		up, err := proxy.ParseUpstream(pl.Upstream)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", upFrom, err)
		}
		for _, other := range l.listeners {
			if up.Network == "tcp" && upstreamIsSelf(up.Address, other.Address, interfaceIPs) {
				return nil, fmt.Errorf("%s %q is tidegate's own listener %q: requests would loop; point it at the app",
					upFrom, pl.Upstream, other.Address)
			}
		}
	}
	if c.Upstream.Address != "" {
		if _, err := proxy.ParseUpstream(c.Upstream.Address); err != nil {
			return nil, fmt.Errorf("%s: %w", l.describeKey(table, "upstream.address"), err)
		}
	}
	return labels, nil
}

// parseListenerList decodes the YAML listeners list strictly.
func parseListenerList(v any) ([]listenerSpec, error) {
	items, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("listeners: want a list, like - {name: web, address: \":8080\", protocol: http}")
	}
	var out []listenerSpec
	for i, it := range items {
		ls, err := decodeStrict[listenerSpec](it)
		if err != nil {
			return nil, fmt.Errorf("listeners[%d]: %w", i, err)
		}
		out = append(out, ls)
	}
	return out, nil
}

// decodeStrict decodes one item of a YAML list (already turned into
// JSON-like values) into T; a field T does not have is an error.
func decodeStrict[T any](item any) (T, error) {
	var v T
	raw, err := json.Marshal(item)
	if err != nil {
		return v, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	err = dec.Decode(&v)
	return v, err
}

// validateApp checks that the app stop strategy has what it needs, and
// resolves "auto".
func (l *loaded) validateApp(table []setting) error {
	a := &l.cfg.App
	stop := l.describeKey(table, "app.stop")
	if a.Stop == "auto" {
		a.Stop = "none"
		if len(a.Command) > 0 {
			a.Stop = "child"
		}
	}
	if len(a.Command) > 0 && a.Stop != "child" {
		return fmt.Errorf("%s is %q but an app command follows --: only the child strategy runs a command", stop, a.Stop)
	}
	switch a.Stop {
	case "child":
		if len(a.Command) == 0 {
			return fmt.Errorf("%s is child but no app command was given: put it after --, as in tidegate run [flags] -- /app/server", stop)
		}
	case "pid":
		if (a.PID > 0) == (a.PIDFile != "") {
			return fmt.Errorf("%s is pid: give exactly one of --app-pid or --app-pidfile", stop)
		}
	case "http":
		u, err := url.Parse(a.StopURL)
		if a.StopURL == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s is http: %s %q must be an http:// or https:// URL", stop, l.describeKey(table, "app.stop_url"), a.StopURL)
		}
	case "command":
		if strings.TrimSpace(a.StopCommand) == "" {
			return fmt.Errorf("%s is command: give the command with --app-stop-command", stop)
		}
	}
	if len(a.ForwardSignals) > 0 {
		if a.Stop != "child" {
			return fmt.Errorf("%s needs the child strategy: tidegate can only signal an app it started (put the app's command after --)", l.describeKey(table, "app.forward_signals"))
		}
		if _, err := parseForwardSignals(a.ForwardSignals); err != nil {
			return fmt.Errorf("%s: %w", l.describeKey(table, "app.forward_signals"), err)
		}
	}
	if a.Restart != "never" && a.Stop != "child" {
		return fmt.Errorf("%s %q needs the child strategy: tidegate can only restart an app it started", l.describeKey(table, "app.restart"), a.Restart)
	}
	return nil
}

// sameListenAddr reports whether two host:port addresses would collide:
// same non-zero port, and the same host or either a wildcard or loopback.
func sameListenAddr(a, b string) bool {
	ha, pa, err1 := proxy.SplitHostPort(a)
	hb, pb, err2 := proxy.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa == 0 || pa != pb {
		return false
	}
	wild := func(h string) bool {
		ip := net.ParseIP(h)
		return h == "" || h == "localhost" || (ip != nil && (ip.IsUnspecified() || ip.IsLoopback()))
	}
	return ha == hb || wild(ha) || wild(hb)
}

// upstreamIsSelf reports whether the app address up (host:port, as
// proxy.ParseUpstream leaves it) is the listener listen's own: the same
// port, and the same host, or a loopback (or localhost, or wildcard) host
// while the listener is on a wildcard or loopback address, or one of this
// machine's addresses (from local) while it is on a wildcard. Another
// host on the same port is a valid setup, and so is another address of
// this machine when the listener is bound to one address (the app on
// [::1]:8080 behind --listen 127.0.0.1:8080). A name other than localhost is
// not resolved: the Via check of the proxy stops what this misses.
func upstreamIsSelf(up, listen string, local func() []net.IP) bool {
	hu, pu, err1 := proxy.SplitHostPort(up)
	hl, pl, err2 := proxy.SplitHostPort(listen)
	if err1 != nil || err2 != nil || pl == 0 || pu != pl {
		return false
	}
	ipu, ipl := net.ParseIP(hu), net.ParseIP(hl)
	if strings.EqualFold(hu, hl) || ipu != nil && ipl != nil && ipu.Equal(ipl) {
		return true
	}
	if ipu != nil && ipl != nil && !ipu.IsUnspecified() && !ipl.IsUnspecified() {
		// Two different addresses, neither a wildcard: a socket bound to
		// one is not reached by dialing the other, loopback or not
		// (127.0.0.1 and [::1], 127.0.0.1 and 127.0.0.2 are apart).
		return false
	}
	wildcard := hl == "" || ipl != nil && ipl.IsUnspecified()
	switch {
	case localHost(hu) && (wildcard || localHost(hl)):
		return true
	case wildcard && ipu != nil:
		return slices.ContainsFunc(local(), ipu.Equal)
	}
	return false
}

// localHost reports whether a host is this machine by its name or
// address alone: localhost, a loopback address, or a wildcard one (which
// a connection takes as this machine).
func localHost(h string) bool {
	if h == "" || strings.EqualFold(h, "localhost") || strings.HasSuffix(strings.ToLower(h), ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// interfaceIPs returns the addresses of this machine's interfaces; none
// if they cannot be listed.
func interfaceIPs() []net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	ips := make([]net.IP, 0, len(addrs))
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			ips = append(ips, n.IP)
		}
	}
	return ips
}

func (l *loaded) describe(s setting) string {
	switch o := l.origin[s.key]; {
	case o == "config file":
		return "config file key " + s.key
	case o == "default":
		return "--" + s.flag + " (default)"
	default:
		return o
	}
}

func (l *loaded) describeKey(table []setting, key string) string {
	i := slices.IndexFunc(table, func(s setting) bool { return s.key == key })
	return l.describe(table[i])
}

// effective returns the config as key → value, for /config, /status and
// reload messages: secret settings show as <redacted>, URL passwords as
// xxxxx (see values for what a reload compares).
func (l *loaded) effective() map[string]string { return l.values(true) }

// values returns the config as key → value; redact hides secrets.
func (l *loaded) values(redact bool) map[string]string {
	out := make(map[string]string)
	for _, s := range settings() {
		v := s.get(&l.cfg)
		if redact && s.secret && v != "" {
			v = redacted
		}
		out[s.key] = v
	}
	if len(l.cfg.App.Command) > 0 {
		out["app.command"] = strings.Join(l.cfg.App.Command, " ")
	}
	if len(l.listeners) > 1 || (len(l.listeners) == 1 && (l.listeners[0].Protocol != "http" || l.listeners[0].TLS != nil || l.listeners[0].Upstream != l.cfg.Upstream.Address)) {
		parts := make([]string, 0, len(l.listeners))
		for _, pl := range l.listeners {
			proto := pl.Protocol
			if pl.TLS != nil {
				proto = "https"
			}
			parts = append(parts, fmt.Sprintf("%s=%s://%s→%s", pl.Name, proto, pl.Address, pl.Upstream))
		}
		out["listeners"] = strings.Join(parts, "; ")
	}
	if len(l.fileProbes) > 0 {
		targets := make([]string, 0, len(l.fileProbes))
		for _, p := range l.fileProbes {
			targets = append(targets, string(p.Kind)+" "+p.WithDefaults().Target())
		}
		out["probes"] = strings.Join(targets, "; ")
	}
	if redact && len(l.appProbes) > 0 {
		// Only the targets: a probe's headers may carry credentials.
		targets := make([]string, 0, len(l.appProbes))
		for _, p := range l.appProbes {
			d := p.WithDefaults()
			targets = append(targets, d.Container+" "+string(d.Kind)+" "+d.Target())
		}
		out["app_probes"] = strings.Join(targets, "; ")
	}
	if redact {
		for k, v := range out {
			out[k] = redactURLs(v)
		}
	}
	return out
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// writeRunUsage prints `tidegate run --help` from the settings table.
func writeRunUsage(w io.Writer) {
	fmt.Fprintf(w, `Usage: tidegate run [flags] [-- APP_COMMAND ARGS...]

Runs the sidecar: proxies the public listener to the app and serves health and
admin endpoints. With a command after --, tidegate runs the app as its child
and stops it only after the drain. Every flag can also be set by the environment variable shown,
or by the key shown in the YAML file given with --config (or TIDEGATE_CONFIG).
Precedence: flag > environment > file > default.

  --config FILE
        YAML file with settings                                    env TIDEGATE_CONFIG
`)
	for _, s := range settings() {
		def := s.def
		if def == "" {
			def = "none"
		}
		fmt.Fprintf(w, "  --%s %s\n        %s\n        default %s; env %s; file key %s\n",
			s.flag, s.arg, s.usage, def, envName(s.flag), s.key)
	}
}
