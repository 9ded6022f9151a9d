package snowlease

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// callers is background load: n goroutines calling NextID until stopped, every ID checked
// (unique across all, increasing per worker within each caller), IDs counted per worker, and
// the longest single NextID call recorded.
type callers struct {
	c       *Client
	set     *idSet
	stop    atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	perW    [1 << 10]atomic.Int64
	longest atomic.Int64 // ns
}

// batch: IDs a caller takes between publishing its counts; pace: the pause after each batch
// (0: flat out). 500 IDs per ms per caller keeps 8 callers near one server's ceiling without
// starving the servers of the two CPUs.
func startCallers(t *testing.T, c *Client, n, batch int, pace time.Duration) *callers {
	l := &callers{c: c, set: newIDSet(c.Layout())}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go l.run(batch, pace)
	}
	t.Cleanup(l.halt)
	return l
}

func (l *callers) run(batch int, pace time.Duration) {
	defer l.wg.Done()
	me := newCaller()
	for !l.stop.Load() {
		for k := 0; k < batch; k++ {
			start := time.Now()
			id, err := l.c.NextID(context.Background())
			if d := int64(time.Since(start)); d > l.longest.Load() {
				l.longest.Store(d) // a racy maximum is fine for a report
			}
			if err == nil {
				err = me.take(l.set, id)
			}
			if err != nil {
				l.mu.Lock()
				l.errs = append(l.errs, err)
				l.mu.Unlock()
				return
			}
		}
		for w, n := range me.count {
			l.perW[w].Add(n)
			delete(me.count, w)
		}
		if pace > 0 {
			time.Sleep(pace)
		}
	}
}

func (l *callers) count(worker int) int64 { return l.perW[worker].Load() }

// waitFor waits until worker has handed out at least more IDs beyond now's count.
func (l *callers) waitFor(t *testing.T, worker int, more int64) {
	t.Helper()
	target := l.count(worker) + more
	waitUntil(t, fmt.Sprintf("%d more IDs from worker %d", more, worker), func() bool {
		l.failIfErr(t)
		return l.count(worker) >= target
	})
}

func (l *callers) failIfErr(t *testing.T) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) > 0 {
		t.Fatalf("a caller saw an error: %v", l.errs[0])
	}
}

func (l *callers) halt() {
	l.stop.Store(true)
	l.wg.Wait()
}

// finish stops the callers and checks everything they saw.
func (l *callers) finish(t *testing.T) {
	t.Helper()
	l.halt()
	l.failIfErr(t)
	l.set.check(t)
}

func TestCallersSeeNoErrorAndNoRepeatWhileServersAreKilledDrainedAndRestarted(t *testing.T) {
	a, b := startServer(t, 10), startServer(t, 11)
	logs := &logLines{}
	c := dial(t, []string{a.addr, b.addr}, quick(WithLogf(logs.logf))...)
	load := startCallers(t, c, 8, 500, time.Millisecond)
	load.waitFor(t, 10, 50_000)
	load.waitFor(t, 11, 50_000)

	a.kill() // SIGKILL mid-run: its unanswered requests go to b
	load.waitFor(t, 11, 500_000)
	a.restart() // same port, same state dir: its IDs continue above the old ones
	load.waitFor(t, 10, 100_000)

	b.term() // SIGTERM: GOAWAY, drain; a carries the load
	load.waitFor(t, 10, 500_000)
	b.restart()
	load.waitFor(t, 11, 100_000)
	load.finish(t)
	for _, want := range []string{"connection to " + a.addr + " lost", "connection to " + b.addr + " lost (snowlease: goaway " + b.addr + ": server sent GOAWAY SHUTDOWN)"} {
		if !logs.contains(want) {
			t.Errorf("no log line %q in\n%s", want, logs)
		}
	}
	t.Logf("IDs: worker 10 %d, worker 11 %d; longest NextID %v",
		load.count(10), load.count(11), time.Duration(load.longest.Load()))
}

// logLines collects a client's log lines.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logf(format string, args ...interface{}) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

func (l *logLines) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}
