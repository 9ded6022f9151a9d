package snowlease

// The client alone: a fake server without the 4,096-per-millisecond ceiling (every LEASE
// gets a full tick, each the next one), so these benchmarks measure NextID itself. The
// throughput against a real server is cmd/snowlease-gobench's job.
//
//	taskset -c 1 go test -run '^$' -bench NextID -cpu 1,4 .

import (
	"context"
	"sync/atomic"
	"testing"
)

func unlimitedClient(b *testing.B) *Client {
	l := DefaultLayout
	var tick atomic.Uint64
	tick.Store(tickNow())
	f := startFake(b, fakeWorker, func(_ int, r leaseFrame) []byte {
		return leased(r.requestID, l.compose(tick.Add(1), fakeWorker, 0), r.count)
	})
	c, err := Dial(context.Background(), []string{f.addr}, WithBufferCapacity(1<<22), WithMaxInFlight(64))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

func BenchmarkNextID(b *testing.B) {
	c := unlimitedClient(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.NextID(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNextIDParallel(b *testing.B) {
	c := unlimitedClient(b)
	ctx := context.Background()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.NextID(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
