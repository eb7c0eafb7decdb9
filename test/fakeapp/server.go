package fakeapp

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Server is an App listening on a real socket.
type Server struct {
	*App
	srv *httptest.Server
	// Addr is where the app listens: host:port for TCP, the socket path for
	// a unix socket.
	Addr string
}

// Start serves a new App on 127.0.0.1 on a free port. t's cleanup closes the
// App (releasing every waiting handler) and then the server.
func Start(t testing.TB) *Server {
	t.Helper()
	s := newServer(New())
	s.srv.Start()
	s.Addr = s.srv.Listener.Addr().String()
	t.Cleanup(s.Close)
	return s
}

// StartUnix serves a new App on a unix socket at path (which must not
// exist). t's cleanup closes it, as for Start.
func StartUnix(t testing.TB, path string) *Server {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("fakeapp: listen on unix socket %s: %v", path, err)
	}
	s := newServer(New())
	_ = s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	s.Addr = path
	t.Cleanup(s.Close)
	return s
}

func newServer(a *App) *Server {
	srv := httptest.NewUnstartedServer(a)
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		switch st {
		case http.StateNew:
			a.conns.Add(1)
			a.open.Add(1)
		case http.StateClosed, http.StateHijacked:
			a.open.Add(-1)
		}
	}
	return &Server{App: a, srv: srv}
}

// Close releases every waiting handler, closes the server and waits for its
// handlers to return.
func (s *Server) Close() {
	s.App.Close()
	s.srv.Close()
}
