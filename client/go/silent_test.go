package snowlease

// Issue 16: servers that stop answering without closing must not stall callers while
// another server answers, and a server that left DNS and came back must be used again
// within a backoff step, not a resolve interval.
//
// The clients here have a 60 s request timeout and a 10 s caller timeout, so a client that
// kept counting a silent server's requests as IDs on the way (and waited for the request
// timeout to drop it) would fail these tests with ErrUnavailable; the time bounds are that
// discriminating margin, not a speed assertion. The longest single NextID call is logged.

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// patient: a silent connection is never dropped by the request timeout during a test.
func patient(extra ...Option) []Option {
	return quick(append([]Option{WithRequestTimeout(time.Minute)}, extra...)...)
}

func TestSilentAndMuteServersBesideAHealthyOneDoNotStallCallers(t *testing.T) {
	healthy := startServer(t, 1)
	// silent greets and then never answers a LEASE; mute accepts and never answers anything.
	silent := startFake(t, 900, func(int, leaseFrame) []byte { return nil })
	mute := startFakeWith(t, nil, nil)
	// A capacity of 65,536 puts the low mark at 32,768 IDs, below the 16 x 4,096 a silent
	// connection holds in flight: counted as on the way, they would stop every refill.
	c := dial(t, []string{silent.addr, mute.addr, healthy.addr}, patient(WithBufferCapacity(1<<16))...)
	// Paced below the healthy server's ceiling, so the longest call measures a stall rather
	// than callers queueing for more IDs than one server issues.
	load := startCallers(t, c, 4, 500, time.Millisecond)
	waitUntil(t, "the silent server to be asked", func() bool { return silent.leases.Load() > 0 })
	load.longest.Store(0)
	load.waitFor(t, 1, 2_000_000)
	load.finish(t)
	if load.count(900) != 0 {
		t.Fatal("IDs from the silent server")
	}
	if silent.conns.Load() == 0 {
		t.Fatal("the silent connection was dropped: demand must have moved for another reason")
	}
	t.Logf("2,000,000 IDs with a silent server holding %d LEASEs; longest NextID %v",
		silent.leases.Load(), time.Duration(load.longest.Load()))
}

func TestServersStoppedWithSIGSTOPDoNotStallCallersAndAreUsedAgainAfterSIGCONT(t *testing.T) {
	servers := []*testServer{startServer(t, 21), startServer(t, 22), startServer(t, 23)}
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.addr)
	}
	c := dial(t, addrs, patient()...)
	load := startCallers(t, c, 4, 500, time.Millisecond)
	for _, w := range []int{21, 22, 23} {
		load.waitFor(t, w, 50_000)
	}
	servers[0].stop()
	servers[1].stop()
	defer servers[0].cont()
	defer servers[1].cont()
	load.longest.Store(0)
	load.waitFor(t, 23, 2_000_000)
	longest := time.Duration(load.longest.Load())
	servers[0].cont()
	servers[1].cont()
	load.waitFor(t, 21, 50_000)
	load.waitFor(t, 22, 50_000)
	load.finish(t)
	t.Logf("2 of 3 servers stopped: 2,000,000 IDs from the third, longest NextID %v", longest)
}

// fakeResolver answers every name with hosts, which a test changes.
type fakeResolver struct {
	mu    sync.Mutex
	hosts []string
	calls atomic.Int64
}

func (r *fakeResolver) LookupHost(_ context.Context, _ string) ([]string, error) {
	r.calls.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string{}, r.hosts...), nil
}

func (r *fakeResolver) set(hosts ...string) {
	r.mu.Lock()
	r.hosts = hosts
	r.mu.Unlock()
}

func TestAServerBackInDNSAfterALossIsUsedWithinABackoffStepNotAResolveInterval(t *testing.T) {
	a := startServer(t, 31)
	b := startServerAt(t, net.JoinHostPort("127.0.0.2", a.port()), 32)
	dns := &fakeResolver{}
	dns.set("127.0.0.1", "127.0.0.2")
	// The default 30 s resolve interval: only an early re-resolution finds b in time.
	c := dial(t, []string{net.JoinHostPort("pods.test", a.port())},
		quick(WithResolver(dns), WithBackoff(10*time.Millisecond, time.Second))...)
	load := startCallers(t, c, 4, 500, time.Millisecond)
	load.waitFor(t, 31, 50_000)
	load.waitFor(t, 32, 50_000)

	dns.set("127.0.0.1") // the pod leaves the endpoints and dies
	b.kill()
	load.waitFor(t, 31, 500_000)
	lookups := dns.calls.Load()

	b.restart() // and comes back at the same address
	dns.set("127.0.0.1", "127.0.0.2")
	back := time.Now()
	load.waitFor(t, 32, 10_000)
	elapsed := time.Since(back)
	load.finish(t)
	if elapsed > 10*time.Second {
		t.Fatalf("b was used again only after %v", elapsed)
	}
	t.Logf("a server back in DNS was used again after %v (%d lookups while it was gone)", elapsed, lookups)
}
