package snowlease

// The real snowlease-server as a child process, for the integration tests. The binary comes
// from SNOWLEASE_SERVER_BIN, else $CARGO_TARGET_DIR/release/snowlease-server, else
// ../../target/release/snowlease-server (the workspace's default target dir). Each server
// gets a fresh state directory, listens on 127.0.0.1:0 and reports its ports in the JSON
// "serving" log line, which is waited for with a bounded deadline; stderr keeps being
// drained (the last lines are kept for failure messages).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// serverStartLimit bounds waiting for the "serving" line and for an exit after a signal;
// the server is up in milliseconds, this only turns a hang into a failure.
const serverStartLimit = 30 * time.Second

func serverBin(t testing.TB) string {
	if bin := os.Getenv("SNOWLEASE_SERVER_BIN"); bin != "" {
		return bin
	}
	dir := os.Getenv("CARGO_TARGET_DIR")
	if dir == "" {
		dir = filepath.Join("..", "..", "target")
	}
	bin, err := filepath.Abs(filepath.Join(dir, "release", "snowlease-server"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no server binary at %s (build it or set SNOWLEASE_SERVER_BIN): %v", bin, err)
	}
	return bin
}

// testServer is one server process; restart keeps its worker id, state dir and port.
type testServer struct {
	t        testing.TB
	worker   int
	stateDir string
	extra    []string
	addr     string // lease address, host:port
	admin    string
	cmd      *exec.Cmd
	exited   chan struct{}
	mu       sync.Mutex
	tail     []string // last stderr lines
}

// startServer starts a server with worker id worker and extra flags; it is killed when the
// test ends.
func startServer(t testing.TB, worker int, extra ...string) *testServer {
	return startServerAt(t, "127.0.0.1:0", worker, extra...)
}

// startServerAt is startServer listening on listen (an address of 127.0.0.0/8).
func startServerAt(t testing.TB, listen string, worker int, extra ...string) *testServer {
	s := &testServer{t: t, worker: worker, stateDir: t.TempDir(), extra: extra}
	s.launch(listen)
	t.Cleanup(s.kill)
	return s
}

func (s *testServer) launch(listen string) {
	args := append([]string{
		"--listen", listen, "--admin-listen", "127.0.0.1:0", "--log-format", "json",
		"--worker-id", fmt.Sprint(s.worker), "--threads", "1", "--state-dir", s.stateDir,
	}, s.extra...)
	cmd := exec.Command(serverBin(s.t), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	serving := make(chan [2]string, 1)
	go s.drain(stderr, serving)
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(s.exited)
	select {
	case addrs := <-serving:
		s.addr, s.admin = addrs[0], addrs[1]
	case <-s.exited:
		s.t.Fatalf("server exited before serving:\n%s", s.stderrTail())
	case <-time.After(serverStartLimit):
		s.kill()
		s.t.Fatalf("server did not report serving within %v:\n%s", serverStartLimit, s.stderrTail())
	}
}

// drain reads log lines until the process ends, reporting the serving line's addresses.
func (s *testServer) drain(r io.Reader, serving chan<- [2]string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		s.mu.Lock()
		s.tail = append(s.tail, line)
		if len(s.tail) > 40 {
			s.tail = s.tail[1:]
		}
		s.mu.Unlock()
		if lease, admin, ok := servingAddrs(line); ok {
			serving <- [2]string{lease, admin}
		}
	}
}

// servingAddrs reads lease_addr and admin_addr from a "serving" line, fields flat or under
// "fields".
func servingAddrs(line string) (string, string, bool) {
	var rec map[string]interface{}
	if json.Unmarshal([]byte(line), &rec) != nil {
		return "", "", false
	}
	fields := rec
	if nested, ok := rec["fields"].(map[string]interface{}); ok {
		fields = nested
	}
	msg, _ := fields["message"].(string)
	if msg == "" {
		msg, _ = rec["message"].(string)
	}
	lease, _ := fields["lease_addr"].(string)
	admin, _ := fields["admin_addr"].(string)
	return lease, admin, msg == "serving" && lease != ""
}

func (s *testServer) stderrTail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.tail, "\n")
}

func (s *testServer) signal(sig syscall.Signal) {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(sig)
	}
}

// kill ends the process with SIGKILL and waits for it.
func (s *testServer) kill() {
	s.signal(syscall.SIGKILL)
	s.waitExit()
}

// term sends SIGTERM (drain: GOAWAY to every client) and waits for the exit.
func (s *testServer) term() {
	s.signal(syscall.SIGTERM)
	s.waitExit()
}

func (s *testServer) waitExit() {
	if s.exited == nil {
		return
	}
	select {
	case <-s.exited:
	case <-time.After(serverStartLimit):
		s.t.Errorf("server did not exit within %v:\n%s", serverStartLimit, s.stderrTail())
	}
}

// restart starts the server again on the same port with the same state dir, so its IDs
// continue above the ones it issued before.
func (s *testServer) restart() {
	s.launch(s.addr)
}

// stop and cont: SIGSTOP and SIGCONT, a server whose connections stay open but silent.
func (s *testServer) stop() { s.signal(syscall.SIGSTOP) }
func (s *testServer) cont() { s.signal(syscall.SIGCONT) }

// port is the lease port.
func (s *testServer) port() string {
	_, port, _ := net.SplitHostPort(s.addr)
	return port
}
