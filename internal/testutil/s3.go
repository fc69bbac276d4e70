package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Server is a real S3 server (versitygw over a temporary directory) for
// tests. It does not import package objstore, so objstore's own tests can
// use it; build an objstore.S3Config from its fields (path-style, not
// secure).
type S3Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	Addr      string // 127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Region    string
	Dir       string // the posix root: each subdirectory is a bucket
}

// VersitygwPath finds the versitygw binary: $LAVIT_VERSITYGW, else
// versitygw on PATH, else $(go env GOPATH)/bin/versitygw.
func VersitygwPath() (string, error) {
	if p := os.Getenv("LAVIT_VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("versitygw (the S3 test server) not found at LAVIT_VERSITYGW=%s: %v; run `make deps` or fix LAVIT_VERSITYGW", p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gopath := os.Getenv("GOPATH")
	if gopath == "" {
		if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
			gopath = strings.TrimSpace(string(out))
		}
	}
	if gopath != "" {
		p := filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "bin", "versitygw")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("versitygw (the S3 test server) is not installed: run `make deps` (it installs github.com/versity/versitygw/cmd/versitygw@v1.8.0), or set LAVIT_VERSITYGW to its path")
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}

// StartS3 starts versitygw on a free loopback port with random keys and a
// temporary posix directory, waits until it answers, and stops it when the
// test ends. A missing binary fails the test (run `make deps`).
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin, err := VersitygwPath()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := &S3Server{
		AccessKey: "lavit" + randomHex(t, 8),
		SecretKey: randomHex(t, 20),
		Region:    "us-east-1",
		Dir:       dir,
	}
	// FreePort can race with another process taking the port; try again
	// if the server exits before it answers.
	var lastErr error
	for try := 0; try < 3; try++ {
		addr := fmt.Sprintf("127.0.0.1:%d", FreePort(t))
		if lastErr = s.start(t, bin, addr); lastErr == nil {
			return s
		}
	}
	t.Fatalf("versitygw did not start: %v", lastErr)
	return nil
}

func (s *S3Server) start(t testing.TB, bin, addr string) error {
	out := &SyncBuffer{Limit: 64 << 10}
	cmd := exec.Command(bin, "--access", s.AccessKey, "--secret", s.SecretKey,
		"--port", addr, "--region", s.Region, "--quiet", "posix", s.Dir)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that a stray child cannot outlive the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		select {
		case <-exited:
			return
		default:
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}

	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("versitygw on %s exited early: %s", addr, strings.TrimSpace(out.String()))
		default:
		}
		// Any HTTP answer (an unsigned request gets 403) means it serves.
		if resp, err := client.Get("http://" + addr + "/"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("versitygw on %s did not answer within 30s: %s", addr, strings.TrimSpace(out.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Addr = addr
	s.Endpoint = "http://" + addr
	t.Cleanup(stop)
	return nil
}

// Client returns a minio-go client for the server.
func (s *S3Server) Client(t testing.TB) *minio.Client {
	t.Helper()
	c, err := minio.New(s.Addr, &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region:       s.Region,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		t.Fatalf("minio client: %v", err)
	}
	return c
}

// MakeBucket creates a bucket.
func (s *S3Server) MakeBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Client(t).MakeBucket(ctx, name, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		t.Fatalf("make bucket %s: %v", name, err)
	}
}

// Proxy forwards TCP connections to a server and can misbehave on
// command: cut each connection after a number of bytes from the server,
// fail new connections, or refuse everything (a server that is down),
// for good or until it has refused a number of connections.
type Proxy struct {
	Addr     string // 127.0.0.1:PORT
	Endpoint string // http://Addr
	target   string
	ln       net.Listener

	mu         sync.Mutex
	cutAfter   int64 // bytes server→client per connection before a cut; 0: never
	failNext   int   // new connections to drop at once
	down       bool  // drop every new connection, cut the open ones
	refuseLeft int   // while down: serve again after this many more refusals; 0: stay down
	up         chan struct{}
	cuts       int
	refused    int
	accepted   int
	conns      map[net.Conn]struct{}
	wg         sync.WaitGroup
}

// StartProxy forwards a loopback port to target (host:port or an
// http:// URL) until the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	target = strings.TrimPrefix(target, "http://")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.Endpoint = "http://" + p.Addr
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

// CutAfter makes each later connection close abruptly after the server
// has sent n bytes on it (0: never).
func (p *Proxy) CutAfter(n int64) {
	p.mu.Lock()
	p.cutAfter = n
	p.mu.Unlock()
}

// FailNext drops the next n new connections as soon as they are accepted.
func (p *Proxy) FailNext(n int) {
	p.mu.Lock()
	p.failNext = n
	p.mu.Unlock()
}

// SetDown(true) drops every new connection and cuts the open ones, as a
// server that went away, until SetDown(false); SetDown(false) serves
// again. Either cancels a DownUntilRefused.
func (p *Proxy) SetDown(down bool) {
	p.setDown(down, 0)
}

// DownUntilRefused takes the server down as SetDown(true) does, and keeps
// it down until it has refused n new connections: then it serves again by
// itself. An outage sized in refusals rather than in seconds always meets
// the clients, however fast or slow they run. The channel is closed once
// the proxy serves again (after the n-th refusal, or an earlier
// SetDown(false)); Refused counts the refusals.
func (p *Proxy) DownUntilRefused(n int) <-chan struct{} {
	if n < 1 {
		p.setDown(false, 0)
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.setDown(true, n)
}

// setDown sets the state and returns the channel closed when it serves again.
func (p *Proxy) setDown(down bool, refuse int) <-chan struct{} {
	p.mu.Lock()
	p.down, p.refuseLeft = down, refuse
	if p.up == nil {
		p.up = make(chan struct{})
	}
	up := p.up
	if !down {
		p.serveAgainLocked()
	}
	var open []net.Conn
	if down {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		abort(c)
	}
	return up
}

// serveAgainLocked ends an outage: it wakes DownUntilRefused's waiters.
func (p *Proxy) serveAgainLocked() {
	p.down, p.refuseLeft = false, 0
	if p.up != nil {
		close(p.up)
		p.up = nil
	}
}

// Cuts is how many connections the proxy cut or dropped (refusals
// included).
func (p *Proxy) Cuts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cuts
}

// Refused is how many new connections the proxy refused because it was
// down (SetDown or DownUntilRefused).
func (p *Proxy) Refused() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// Accepted is how many connections the proxy accepted.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Close stops the proxy and cuts its connections.
func (p *Proxy) Close() {
	p.ln.Close()
	p.SetDown(true)
	p.wg.Wait()
}

// abort closes a connection with a reset rather than an orderly FIN.
func abort(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.accepted++
		drop := p.down || p.failNext > 0
		if p.down {
			p.refused++
			if p.refuseLeft > 0 {
				if p.refuseLeft--; p.refuseLeft == 0 {
					p.serveAgainLocked() // this one is still refused
				}
			}
		}
		if p.failNext > 0 {
			p.failNext--
		}
		limit := p.cutAfter
		if drop {
			p.cuts++
		} else {
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if drop {
			abort(c)
			continue
		}
		p.wg.Add(1)
		go p.forward(c, limit)
	}
}

func (p *Proxy) forward(client net.Conn, limit int64) {
	defer p.wg.Done()
	defer func() {
		p.mu.Lock()
		delete(p.conns, client)
		p.mu.Unlock()
	}()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		abort(client)
		return
	}
	done := make(chan struct{})
	go func() { // client → server
		io.Copy(server, client)
		if tc, ok := server.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	// server → client, cut after limit bytes.
	var src io.Reader = server
	if limit > 0 {
		src = io.LimitReader(server, limit)
	}
	n, _ := io.Copy(client, src)
	if limit > 0 && n >= limit {
		p.mu.Lock()
		p.cuts++
		p.mu.Unlock()
		abort(client) // mid-response: the client sees a reset or a short body
	} else {
		client.Close() // the server finished: let the client read what it sent
	}
	server.Close()
	<-done
}
