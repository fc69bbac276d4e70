// Package natsembed runs a NATS server inside a lavit process. Every
// coordinator embeds one by default; the servers of a coordinator cluster
// join one NATS cluster through routes, so a worker connected to any of them
// reaches the current leader.
package natsembed

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/lavit-org/lavit/internal/logging"
)

// ClusterName is the NATS cluster name shared by every coordinator.
const ClusterName = "lavit"

// Options configures an embedded server.
type Options struct {
	// ServerName names the server in the NATS cluster (the coordinator's node id).
	ServerName string
	// ClientAddr is host:port for clients; port 0 picks a free port.
	ClientAddr string
	// ClusterAddr is host:port for routes to other coordinators; empty
	// disables clustering, port 0 picks a free port.
	ClusterAddr string
	// Routes are nats-route://host:port URLs of other coordinators' cluster listeners.
	Routes []string
	// StoreDir is where the server may keep state.
	StoreDir string
	// MaxPayload bounds every message the server accepts.
	MaxPayload int32
	// ReadyTimeout bounds the wait for the listeners (default 10 s).
	ReadyTimeout time.Duration
	// Authenticate, when set, decides about every client connection and
	// what it may publish and subscribe to (nil: any client may do
	// anything; lavit's coordinators always set it).
	Authenticate Authenticator
	// RouteUser and RoutePassword, when set, are what another server's
	// route must present, and what ours present (added to Routes that
	// carry none).
	RouteUser, RoutePassword string
	// TLS, when set, is required of every client connection (in-process
	// connections excepted); RouteTLS of every route.
	TLS, RouteTLS *tls.Config
	Logger        *slog.Logger
}

// tlsTimeout bounds a TLS handshake on the client and route listeners.
const tlsTimeout = 2 * time.Second

// Server is a running embedded NATS server.
type Server struct {
	srv  *server.Server
	auth *clientAuth // nil without Options.Authenticate
}

// splitHostPort parses host:port where a port of 0 means "pick one"; the NATS
// server wants -1 for that.
func splitHostPort(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("address %q: bad port %q", addr, portStr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// Start starts a server and waits until it accepts connections.
func Start(opts Options) (*Server, error) {
	host, port, err := splitHostPort(opts.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("nats client listener: %w", err)
	}
	so := &server.Options{
		ServerName: opts.ServerName,
		Host:       host,
		Port:       port,
		NoSigs:     true,
		StoreDir:   opts.StoreDir,
		MaxPayload: opts.MaxPayload,
		// Heartbeats to a coordinator must notice a dead client quickly.
		PingInterval: 5 * time.Second,
		MaxPingsOut:  3,
	}
	if opts.TLS != nil {
		so.TLSConfig, so.TLSTimeout = opts.TLS, tlsTimeout.Seconds()
	}
	if opts.ClusterAddr != "" {
		chost, cport, err := splitHostPort(opts.ClusterAddr)
		if err != nil {
			return nil, fmt.Errorf("nats cluster listener: %w", err)
		}
		so.Cluster = server.ClusterOpts{Name: ClusterName, Host: chost, Port: cport,
			Username: opts.RouteUser, Password: opts.RoutePassword}
		if opts.RouteTLS != nil {
			so.Cluster.TLSConfig, so.Cluster.TLSTimeout = opts.RouteTLS, tlsTimeout.Seconds()
		}
		for _, r := range opts.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("nats route %q: want nats-route://host:port", r)
			}
			if u.User == nil && opts.RouteUser != "" {
				u.User = url.UserPassword(opts.RouteUser, opts.RoutePassword)
			}
			so.Routes = append(so.Routes, u)
		}
	} else if len(opts.Routes) > 0 {
		return nil, fmt.Errorf("nats routes given without a cluster listener address")
	}
	var auth *clientAuth
	if opts.Authenticate != nil {
		log := opts.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		auth = &clientAuth{authenticate: opts.Authenticate, log: log, conns: map[uint64]Credentials{}}
		so.CustomClientAuthentication = auth
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("create nats server: %w", err)
	}
	if opts.Logger != nil {
		var logger server.Logger = logging.NATSLogger{L: opts.Logger}
		if rt := opts.RouteTLS; rt != nil && rt.InsecureSkipVerify && rt.VerifyConnection != nil {
			logger = routesVerifiedLogger{logging.NATSLogger{L: opts.Logger}}
		}
		srv.SetLoggerV2(logger, false, false, false)
	}
	srv.Start()
	wait := opts.ReadyTimeout
	if wait == 0 {
		wait = 10 * time.Second
	}
	if !srv.ReadyForConnections(wait) {
		srv.Shutdown()
		return nil, fmt.Errorf("nats server on %s not ready after %s (is the port in use?)", opts.ClientAddr, wait)
	}
	return &Server{srv: srv, auth: auth}, nil
}

// ClientURL is the nats:// URL clients connect to.
func (s *Server) ClientURL() string { return s.srv.ClientURL() }

// RouteURL is the nats-route:// URL other coordinators route to, or "" when
// clustering is off. It carries no credentials.
func (s *Server) RouteURL() string {
	a := s.srv.ClusterAddr()
	if a == nil {
		return ""
	}
	return "nats-route://" + a.String()
}

// NumRoutes reports how many routes to other servers are up.
func (s *Server) NumRoutes() int { return s.srv.NumRoutes() }

// Inner exposes the server for in-process client connections.
func (s *Server) Inner() *server.Server { return s.srv }

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// routeInsecureWarning is what the NATS server warns when RouteTLS skips
// the standard verification.
const routeInsecureWarning = "TLS certificate chain and hostname of solicited routes will not be verified"

// routesVerifiedLogger turns that warning into a debug line when
// RouteTLS verifies peers itself (VerifyConnection, as
// clusterca.Keyring does: its trust changes during a CA rotation, which
// a static RootCAs cannot follow), so operators are not told routes go
// unverified when they do not.
type routesVerifiedLogger struct{ logging.NATSLogger }

func (l routesVerifiedLogger) Warnf(format string, v ...any) {
	if strings.HasPrefix(format, routeInsecureWarning) {
		l.L.Debug("routes' certificates are verified by the route TLS configuration's VerifyConnection, not by NATS")
		return
	}
	l.NATSLogger.Warnf(format, v...)
}
