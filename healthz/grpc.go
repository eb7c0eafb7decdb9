package healthz

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// GRPCHealth is the standard grpc.health.v1 service (Check and Watch) for
// the sidecar: service "" is the pod's overall readiness, and each
// container name is that container's readiness.
//
// Once Drain is called every service is NOT_SERVING for good: later Set
// calls are ignored until Undrain, after which every service stays
// NOT_SERVING until Set says otherwise. (grpc-go's own Resume would mark
// every service SERVING for a moment; this latch never does.)
type GRPCHealth struct {
	srv *health.Server

	mu       sync.Mutex
	services map[string]bool
	latched  bool
}

// NewGRPCHealth returns the service with every status NOT_SERVING until Set.
func NewGRPCHealth(services ...string) *GRPCHealth {
	g := &GRPCHealth{srv: health.NewServer(), services: map[string]bool{}}
	g.Set("", false)
	for _, s := range services {
		g.Set(s, false)
	}
	return g
}

// Register adds the service to a gRPC server.
func (g *GRPCHealth) Register(s *grpc.Server) { healthpb.RegisterHealthServer(s, g.srv) }

// Set records whether service is serving; ignored while drained.
func (g *GRPCHealth) Set(service string, serving bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.services[service] = true
	if g.latched {
		return
	}
	g.srv.SetServingStatus(service, servingStatus(serving))
}

// Drain sets every service NOT_SERVING and ignores Set until Undrain.
func (g *GRPCHealth) Drain() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.latched = true
	for s := range g.services {
		g.srv.SetServingStatus(s, healthpb.HealthCheckResponse_NOT_SERVING)
	}
}

// Undrain accepts Set again; every service stays NOT_SERVING until Set.
func (g *GRPCHealth) Undrain() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.latched = false
}

func servingStatus(serving bool) healthpb.HealthCheckResponse_ServingStatus {
	if serving {
		return healthpb.HealthCheckResponse_SERVING
	}
	return healthpb.HealthCheckResponse_NOT_SERVING
}
