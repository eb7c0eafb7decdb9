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
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
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
	testpb.RegisterTestServiceServer(s.srv, GRPCService{})
	done := make(chan struct{})
	go func() { _ = s.srv.Serve(ln); close(done) }()
	t.Cleanup(func() { s.srv.Stop(); <-done })
	return s
}

// GRPCService implements the four RPC kinds of grpc-go's interop
// TestService: UnaryCall (answering ResponseStatus as an error with an
// "x-detail" trailer, and reporting the deadline it saw in Username),
// StreamingOutputCall (each response after its IntervalUs), client
// streaming and bidi. Tests register it on their own servers too.
type GRPCService struct {
	testpb.UnimplementedTestServiceServer
}

func payload(n int32) *testpb.Payload {
	return &testpb.Payload{Body: []byte(strings.Repeat("p", int(n)))}
}

func (GRPCService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	if st := req.GetResponseStatus(); st != nil && st.GetCode() != 0 {
		_ = grpc.SetTrailer(ctx, metadata.Pairs("x-detail", "from-the-app"))
		return nil, status.Error(codes.Code(st.GetCode()), st.GetMessage())
	}
	msg := ""
	if d, ok := ctx.Deadline(); ok {
		msg = "deadline in " + time.Until(d).Round(time.Second).String()
	}
	return &testpb.SimpleResponse{Payload: payload(req.GetResponseSize()), Username: msg}, nil
}

func (GRPCService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, s grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	for _, p := range req.GetResponseParameters() {
		if d := time.Duration(p.GetIntervalUs()) * time.Microsecond; d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-s.Context().Done():
				t.Stop()
				return s.Context().Err()
			}
		}
		if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(p.GetSize())}); err != nil {
			return err
		}
	}
	return nil
}

func (GRPCService) StreamingInputCall(s grpc.ClientStreamingServer[testpb.StreamingInputCallRequest, testpb.StreamingInputCallResponse]) error {
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

func (GRPCService) FullDuplexCall(s grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest, testpb.StreamingOutputCallResponse]) error {
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, p := range m.GetResponseParameters() {
			if err := s.Send(&testpb.StreamingOutputCallResponse{Payload: payload(p.GetSize())}); err != nil {
				return err
			}
		}
	}
}
