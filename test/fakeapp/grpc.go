package fakeapp

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// GRPCServer is a real grpc-go server with grpc-go's interop TestService:
// unary, server-streaming (each response after its interval), client-
// streaming and bidi calls.
type GRPCServer struct {
	Addr string
	srv  *grpc.Server
}

// StartGRPC serves the TestService on 127.0.0.1 on a free port; t's cleanup
// stops it.
func StartGRPC(t testing.TB) *GRPCServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &GRPCServer{Addr: ln.Addr().String(), srv: grpc.NewServer()}
	testpb.RegisterTestServiceServer(s.srv, testService{})
	done := make(chan struct{})
	go func() { _ = s.srv.Serve(ln); close(done) }()
	t.Cleanup(func() { s.srv.Stop(); <-done })
	return s
}

type testService struct {
	testpb.UnimplementedTestServiceServer
}

func (testService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte(strings.Repeat("p", int(req.GetResponseSize())))}}, nil
}

// StreamingOutputCall sends one response per parameter, each after its
// IntervalUs, so a test can hold a stream open for a known time.
func (testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for _, p := range req.GetResponseParameters() {
		t := time.NewTimer(time.Duration(p.GetIntervalUs()) * time.Microsecond)
		select {
		case <-s.Context().Done():
			t.Stop()
			return s.Context().Err()
		case <-t.C:
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, p.GetSize())}}); err != nil {
			return err
		}
	}
	return nil
}

func (testService) StreamingInputCall(s grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
	var total int32
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return s.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: total})
		}
		if err != nil {
			return err
		}
		total += int32(len(m.GetPayload().GetBody()))
	}
}
