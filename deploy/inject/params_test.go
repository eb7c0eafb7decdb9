package inject

import "testing"

// The sidecar's default ports must not collide with the ports the meshes
// users run beside it put in every pod: an injected pod with Istio's or
// Linkerd's sidecar would otherwise have two containers on one port.
func TestDefaultPortsAvoidOtherMeshes(t *testing.T) {
	taken := map[int32]string{
		15000: "Envoy admin (Istio)", 15001: "Envoy outbound (Istio)", 15004: "Istio debug", 15006: "Envoy inbound (Istio)",
		15008: "HBONE (Istio)", 15009: "HBONE (Istio)", 15020: "Istio merged metrics", 15021: "Istio health",
		15053: "Istio DNS", 15090: "Envoy Prometheus (Istio)",
		4140: "Linkerd outbound", 4143: "Linkerd inbound", 4190: "Linkerd control", 4191: "Linkerd admin",
	}
	p := Params{}.WithDefaults()
	for name, port := range map[string]int32{"listen": p.ListenPort, "health": p.HealthPort, "metrics": p.MetricsPort, "admin": p.AdminPort} {
		if other, ok := taken[port]; ok {
			t.Errorf("default %s port %d is %s's", name, port, other)
		}
	}
}
