package snowlease

// Helpers of the integration tests: quick client options, a compact set of IDs seen, a
// per-caller order check, and a bounded wait on a condition.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitLimit bounds every wait on a condition; the conditions normally hold within
// milliseconds, this only turns a hang into a failure.
const waitLimit = 30 * time.Second

// quick is short timeouts and backoff so failure paths finish quickly.
func quick(extra ...Option) []Option {
	return append([]Option{WithTimeout(10 * time.Second), WithBackoff(10*time.Millisecond, 200*time.Millisecond)}, extra...)
}

func dial(t testing.TB, addrs []string, opts ...Option) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addrs, opts...)
	if err != nil {
		t.Fatalf("Dial %v: %v", addrs, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitUntil polls cond every 5 ms until it holds or waitLimit passes.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %v", what, waitLimit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// pageBits: one bitmap page covers 2^20 positions of one worker (128 KiB), about a quarter
// of a second of a worker at its ceiling.
const pageBits = 20

// idSet records IDs as bits per (worker, position), so 64 M IDs of one worker over 16 s take
// about 8 MiB instead of 512 MiB as a slice. add is safe from many goroutines: pages are
// created under a mutex and bits set with compare-and-swap, so a repeat is seen at once.
type idSet struct {
	layout  Layout
	mu      sync.Mutex
	pages   map[uint64]*[1 << (pageBits - 6)]uint64
	repeats atomic.Int64
	first   atomic.Value // the first repeated ID, as a string
}

func newIDSet(l Layout) *idSet {
	return &idSet{layout: l, pages: map[uint64]*[1 << (pageBits - 6)]uint64{}}
}

// pageCache is one goroutine's last page, so most adds take no lock.
type pageCache struct {
	key  uint64
	page *[1 << (pageBits - 6)]uint64
}

// add records id; false if it was already there.
func (s *idSet) add(cache *pageCache, id int64) bool {
	p := s.layout.decompose(uint64(id))
	pos := p.Tick<<s.layout.SequenceBits | uint64(p.Sequence)
	key := uint64(p.Worker)<<48 | pos>>pageBits
	if cache.page == nil || cache.key != key {
		s.mu.Lock()
		page := s.pages[key]
		if page == nil {
			page = new([1 << (pageBits - 6)]uint64)
			s.pages[key] = page
		}
		s.mu.Unlock()
		cache.key, cache.page = key, page
	}
	bit := pos & (1<<pageBits - 1)
	word, mask := &cache.page[bit>>6], uint64(1)<<(bit&63)
	for {
		old := atomic.LoadUint64(word)
		if old&mask != 0 {
			if s.repeats.Add(1) == 1 {
				s.first.Store(fmt.Sprintf("%d (%v)", id, p))
			}
			return false
		}
		if atomic.CompareAndSwapUint64(word, old, old|mask) {
			return true
		}
	}
}

func (s *idSet) check(t testing.TB) {
	t.Helper()
	if n := s.repeats.Load(); n > 0 {
		t.Fatalf("%d IDs repeated, the first %v", n, s.first.Load())
	}
}

// caller is one goroutine's view: IDs must increase per worker across its calls.
type caller struct {
	last  map[uint16]int64
	cache pageCache
	count map[uint16]int64 // IDs per worker
}

func newCaller() *caller { return &caller{last: map[uint16]int64{}, count: map[uint16]int64{}} }

// take records one ID; an error names an ID that did not increase within its worker.
func (c *caller) take(set *idSet, id int64) error {
	w := set.layout.decompose(uint64(id)).Worker
	if last, ok := c.last[w]; ok && id <= last {
		return fmt.Errorf("worker %d: %d after %d", w, id, last)
	}
	c.last[w] = id
	c.count[w]++
	set.add(&c.cache, id)
	return nil
}

// draw takes one ID from client through NextID and records it with take.
func (c *caller) draw(client *Client, set *idSet) error {
	id, err := client.NextID(context.Background())
	if err != nil {
		return err
	}
	return c.take(set, id)
}
