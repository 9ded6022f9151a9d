package snowlease

// The client against the real server (SNOWLEASE_SERVER_BIN), on 127.0.0.1:0.

import (
	"context"
	"errors"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSixtyFourGoroutinesTakingAMillionIDsEachNeverSeeARepeat(t *testing.T) {
	const goroutines = 64
	perGoroutine := 1_000_000
	if raceEnabled {
		// The race detector makes each call ~10x slower; a quarter of the IDs still covers
		// every buffer and refill path many thousands of times.
		perGoroutine = 250_000
	}
	s := startServer(t, 1)
	c := dial(t, []string{s.addr}, quick()...)
	set := newIDSet(c.Layout())
	start := time.Now()
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			me := newCaller()
			for i := 0; i < perGoroutine; i++ {
				if err := me.draw(c, set); err != nil {
					errs <- err
					return
				}
			}
			if me.count[1] != int64(perGoroutine) {
				errs <- errors.New("IDs from a worker other than the server's")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	set.check(t)
	elapsed := time.Since(start)
	t.Logf("%d x %d IDs in %v (%.0f IDs/s)", goroutines, perGoroutine, elapsed, float64(goroutines*perGoroutine)/elapsed.Seconds())
}

func TestLeaseReturnsOneContiguousRangeOfAtMostMaxLeaseFromOneMillisecond(t *testing.T) {
	s := startServer(t, 3)
	c := dial(t, []string{s.addr}, quick()...)
	if c.Layout() != DefaultLayout {
		t.Fatalf("layout %v", c.Layout())
	}
	// A block leased straight from the server is newer than ranges still in the buffer, so
	// blocks are not in order across calls; uniqueness covers everything.
	set := newIDSet(c.Layout())
	var cache pageCache
	singles := newCaller()
	for i := 0; i < 200; i++ {
		b, err := c.Lease(context.Background(), 1_000_000)
		if err != nil {
			t.Fatal(err)
		}
		if b.Count < 1 || b.Count > c.Layout().MaxLease() {
			t.Fatalf("%+v", b)
		}
		first, last := c.Decode(b.First), c.Decode(b.End()-1)
		if first.Worker != 3 || first.Tick != last.Tick || last.Sequence-first.Sequence+1 != b.Count {
			t.Fatalf("%+v spans %v .. %v", b, first, last)
		}
		for _, id := range b.IDs() {
			set.add(&cache, id)
		}
		if i%2 == 0 { // mix in buffered IDs and small leases from the buffer
			if err := singles.draw(c, set); err != nil {
				t.Fatal(err)
			}
		}
	}
	set.check(t)
	if _, err := c.Lease(context.Background(), 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("Lease(0): %v", err)
	}
}

func TestIDsOlderThanMaxAgeAreDroppedNotHandedOut(t *testing.T) {
	s := startServer(t, 4)
	c := dial(t, []string{s.addr}, quick(WithMaxAge(200*time.Millisecond))...)
	id, err := c.NextID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	stale := c.Decode(id)
	// Waiting for time to pass is the point of this test, not synchronisation.
	time.Sleep(400 * time.Millisecond)
	id, err = c.NextID(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Ranges are dropped at 7/8 of max age (175 ms), so a range still held at 400 ms was
	// received after 225 ms.
	if fresh := c.Decode(id); fresh.Time.Sub(stale.Time) < 150*time.Millisecond {
		t.Fatalf("stale %v, next %v", stale, fresh)
	}
}

func TestAContextEndsAWaitWithItsOwnErrorAndLeavesTheClientUsable(t *testing.T) {
	never := startFake(t, fakeWorker, func(int, leaseFrame) []byte { return nil })
	c := dial(t, []string{never.addr}, quick(WithLowWater(0))...)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.NextID(cancelled); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled NextID: %v", err)
	}
	if _, err := c.Lease(cancelled, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Lease: %v", err)
	}
	short, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := c.NextID(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("NextID past its deadline: %v", err)
	}
	short3, cancel3 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel3()
	if _, err := c.Lease(short3, 10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lease past its deadline: %v", err)
	}
	if _, err := Dial(cancelled, []string{never.addr}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial with a cancelled context: %v", err)
	}
}

func TestCloseEndsWaitingCallsAndEveryLaterCallWithErrClosed(t *testing.T) {
	never := startFake(t, fakeWorker, func(int, leaseFrame) []byte { return nil })
	c := dial(t, []string{never.addr}, quick(WithLowWater(0))...)
	waiting := make(chan error, 2)
	go func() { _, err := c.NextID(context.Background()); waiting <- err }()
	go func() { _, err := c.Lease(context.Background(), 5); waiting <- err }()
	// One LEASE is the refill's (low water 0 still keeps one ID coming), the second the Lease.
	waitUntil(t, "the fake to receive the Lease", func() bool { return never.leases.Load() >= 2 })
	c.Close()
	for i := 0; i < 2; i++ {
		if err := <-waiting; !errors.Is(err, ErrClosed) {
			t.Fatalf("a waiting call ended with %v", err)
		}
	}
	if _, err := c.NextID(context.Background()); !errors.Is(err, ErrClosed) || IsRetryable(err) {
		t.Fatalf("NextID after Close: %v", err)
	}
	if _, err := c.Lease(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Lease after Close: %v", err)
	}
	c.Close() // a second Close is harmless
}

func TestDialingNothingFailsAfterTheTimeoutWithTheCause(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(context.Background(), []string{addr}, WithTimeout(300*time.Millisecond), WithBackoff(10*time.Millisecond, 50*time.Millisecond))
	var ce *ConnError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &ce) || ce.Op != "connect" || !IsRetryable(err) {
		t.Fatalf("%v", err)
	}
	if _, err := Dial(context.Background(), []string{"ids:http"}); !errors.Is(err, ErrConfig) || IsRetryable(err) {
		t.Fatalf("%v", err)
	}
}

func TestTheClientReconnectsThroughANameAfterTheServerRestartsOnTheSamePort(t *testing.T) {
	s := startServer(t, 5)
	name := net.JoinHostPort("localhost", s.port())
	c := dial(t, []string{name}, quick(WithBufferCapacity(8192), WithLowWater(4096))...)
	set := newIDSet(c.Layout())
	me := newCaller()
	take := func(n int) {
		for i := 0; i < n; i++ {
			if err := me.draw(c, set); err != nil {
				t.Fatal(err)
			}
		}
	}
	take(1000)
	s.term()
	s.restart()
	restarted := time.Now()
	take(20_000) // more than the buffer holds: the rest comes from the restarted server
	if newest := c.Decode(me.last[5]); newest.Time.Add(5 * time.Millisecond).Before(restarted.Truncate(time.Millisecond)) {
		t.Fatalf("newest ID %v is from before the restart at %v", newest, restarted)
	}
	set.check(t)
}

func TestAServerWithATokenServesOnlyClientsThatSendIt(t *testing.T) {
	tokenFile := t.TempDir() + "/token"
	if err := writeFile(tokenFile, "s3cret\n"); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, 6, "--token-file", tokenFile)
	c := dial(t, []string{s.addr}, quick(WithToken("s3cret"))...)
	if _, err := c.NextID(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, opts := range [][]Option{nil, {WithToken("wrong")}} {
		start := time.Now()
		_, err := Dial(context.Background(), []string{s.addr}, quick(opts...)...)
		var se *ServerError
		if !errors.As(err, &se) || se.Code != CodeUnauthorized || IsRetryable(err) {
			t.Fatalf("Dial with %d options: %v", len(opts), err)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Fatalf("the error shows the token: %v", err)
		}
		t.Logf("refused after %v: %v", time.Since(start), err)
	}
}

func TestCloseLeavesNoGoroutineBehind(t *testing.T) {
	s := startServer(t, 13)
	never := startFake(t, fakeWorker, func(int, leaseFrame) []byte { return nil })
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	before := runtime.NumGoroutine()
	for i := 0; i < 5; i++ {
		c := dial(t, []string{s.addr, never.addr, deadAddr, net.JoinHostPort("localhost", s.port())}, quick()...)
		for k := 0; k < 10_000; k++ {
			if _, err := c.NextID(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
	}
	// The fake's own goroutines end when the client's connections close.
	waitUntil(t, "the client's goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
