package healthz

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// GRPCHealth is the standard grpc.health.v1 service (Check and Watch) for
// the sidecar: service "" is the pod's overall readiness, and each
// container name is that container's readiness.
//
// Once Drain is called every service is NOT_SERVING for good: later Set
// calls are ignored until Undrain (grpc-go's health.Server latch).
type GRPCHealth struct {
	srv *health.Server
}

// NewGRPCHealth returns the service with every status NOT_SERVING until Set.
func NewGRPCHealth(services ...string) *GRPCHealth {
	g := &GRPCHealth{srv: health.NewServer()}
	g.Set("", false)
	for _, s := range services {
		g.Set(s, false)
	}
	return g
}

// Register adds the service to a gRPC server.
func (g *GRPCHealth) Register(s *grpc.Server) { healthpb.RegisterHealthServer(s, g.srv) }

// Set records whether service is serving.
func (g *GRPCHealth) Set(service string, serving bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if serving {
		st = healthpb.HealthCheckResponse_SERVING
	}
	g.srv.SetServingStatus(service, st)
}

// Drain sets every service NOT_SERVING and ignores Set until Undrain.
func (g *GRPCHealth) Drain() { g.srv.Shutdown() }

// Undrain accepts Set again; the caller sets the current statuses.
func (g *GRPCHealth) Undrain() { g.srv.Resume() }
