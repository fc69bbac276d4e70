package coordinator

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/lavit-org/lavit/internal/wire"
)

// The HTTP API, over TLS with this node's certificate of the cluster CA
// (HTTPS only). The probes are open; status and anything that changes
// state need "Authorization: Bearer TOKEN" (the admin token).
//
//	GET  /healthz      200 while the process runs
//	GET  /readyz       200 once raft has a leader, the cluster is
//	                   initialised and this node has applied what it knows
//	                   is committed; 503 with the reason otherwise
//	GET  /v1/status    this node's view of the cluster (JSON; needs the admin token)
//	POST /v1/raft/join add a coordinator (used by `up --join`)

func (s *Server) startHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("http listener on %s: %w", s.cfg.HTTPAddr, err)
	}
	s.httpAddr = ln.Addr().String()
	// HTTPS only, with this node's certificate: clients pin the cluster
	// CA (probes, which cannot, skip verification and learn nothing).
	ln = tls.NewListener(ln, s.keys.ServerTLS())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", s.handleReadyz)
	mux.HandleFunc("GET /v1/status", s.handleHTTPStatus)
	mux.HandleFunc("POST /v1/raft/join", s.handleHTTPJoin)
	s.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		MaxHeaderBytes:    16 << 10,
		// Failed handshakes (probes, strangers) at debug level, not on stderr.
		ErrorLog: slog.NewLogLogger(s.log.With("component", "http").Handler(), slog.LevelDebug),
	}
	go func() {
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server stopped", "err", err)
		}
	}()
	return nil
}

// Ready reports whether this node can serve: "" when ready, else why not.
func (s *Server) Ready() string {
	if s.raft == nil || s.nc == nil {
		return "starting"
	}
	if s.Leader() == "" {
		return "no raft leader"
	}
	if !s.nc.IsConnected() {
		return "not connected to NATS"
	}
	initialised := false
	s.fsm.Read(func(st *State, _ uint64) { initialised = st.ClusterID != "" })
	if !initialised {
		return "cluster not initialised yet"
	}
	if applied, commit := s.raft.AppliedIndex(), s.raft.CommitIndex(); applied < commit {
		return fmt.Sprintf("catching up (applied %d of %d)", applied, commit)
	}
	return ""
}

func (s *Server) handleReadyz(w http.ResponseWriter, _ *http.Request) {
	if why := s.Ready(); why != "" {
		http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ready\n")
}

// nodeStatus is /v1/status: the cluster status plus this node's own view.
type nodeStatus struct {
	wire.Status
	Node      string `json:"node"`
	RaftState string `json:"raft_state"`
	Ready     string `json:"ready"`
}

func (s *Server) handleHTTPStatus(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		s.replyHTTPError(w, wire.Errorf(wire.CodeAuth, "status: missing \"Authorization: Bearer TOKEN\" header (the admin token)"))
		return
	}
	if werr := s.authorize(wire.Auth{Token: token, From: "http " + r.RemoteAddr}, wire.SubjectStatus); werr != nil {
		s.replyHTTPError(w, werr)
		return
	}
	st, err := s.Status()
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, wire.EncodeReply(nil, toWireError(err)))
		return
	}
	ready := s.Ready()
	if ready == "" {
		ready = "ready"
	}
	b, _ := json.MarshalIndent(nodeStatus{Status: st, Node: s.cfg.NodeID, RaftState: s.raft.State().String(), Ready: ready}, "", "  ")
	writeJSON(w, http.StatusOK, b)
}

func writeJSON(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(body)
	w.Write([]byte("\n"))
}

// httpCode maps a wire error code to an HTTP status.
func httpCode(code string) int {
	switch code {
	case wire.CodeBadRequest, wire.CodeBadVersion:
		return http.StatusBadRequest
	case wire.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case wire.CodeAuth:
		return http.StatusUnauthorized
	case wire.CodeNotLeader, wire.CodeUnavailable:
		return http.StatusServiceUnavailable
	case wire.CodeConflict:
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func (s *Server) replyHTTPError(w http.ResponseWriter, werr *wire.Error) {
	writeJSON(w, httpCode(werr.Code), wire.EncodeReply(nil, werr))
}

func (s *Server) handleHTTPJoin(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		s.replyHTTPError(w, wire.Errorf(wire.CodeAuth, "raft join: missing \"Authorization: Bearer TOKEN\" header"))
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, wire.MaxMessageBytes+1))
	if err != nil {
		s.replyHTTPError(w, wire.Errorf(wire.CodeBadRequest, "raft join: read body: %v", err))
		return
	}
	var req wire.RaftJoinRequest
	if werr := wire.DecodeRequest("raft join", data, &req); werr != nil {
		s.replyHTTPError(w, werr)
		return
	}
	req.Token = token
	if werr := s.authorize(req.Auth, wire.SubjectRaftJoin); werr != nil {
		s.replyHTTPError(w, werr)
		return
	}
	var reply *wire.RaftJoinReply
	if s.IsLeader() {
		reply, err = s.addVoter(&req)
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		reply, err = s.forwardJoin(ctx, &req)
	}
	if err != nil {
		var werr *wire.Error
		if !errors.As(err, &werr) {
			werr = toWireError(err)
			if errors.Is(err, wire.ErrNoLeader) {
				werr = wire.Errorf(wire.CodeUnavailable, "raft join: %v", err)
			}
		}
		s.replyHTTPError(w, werr)
		return
	}
	writeJSON(w, http.StatusOK, wire.EncodeReply(reply, nil))
}
