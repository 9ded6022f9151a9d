package snowlease

// The shared ID buffer: a queue of verified ranges that callers pop from and the driver
// pushes to.
//
// Ranges enter at the back in the order their LEASED replies were verified (so the front is
// normally the oldest), callers take IDs from the front under one short mutex (memory only:
// no clock read, no syscall, no channel), and the driver drops ranges once they pass the max
// age, counted from when they were asked for. The buffer also carries the low-water trigger: each take compares what is
// left with wakeBelow, which the driver sets, and reports the first crossing so the caller
// pokes the driver exactly once until the driver re-arms it. Callers that find it empty wait
// on refilled, a channel the driver closes when IDs arrive or the client's state changes.

import (
	"sync"
	"time"
)

// span is one leased range, partly used.
type span struct {
	next, end uint64 // next ID to hand out; one past the last
	// asked is when the LEASE was sent (the IDs are no older), on the driver's monotonic
	// clock (time since the client started): the age max age limits.
	asked time.Duration
}

// idBuffer: see the file comment. Every field is guarded by mu.
type idBuffer struct {
	mu     sync.Mutex
	spans  []span // spans[head:] are live, oldest first
	head   int
	avail  uint64 // sum of the live spans' remaining IDs
	drawn  uint64 // IDs ever taken (wrapping): the driver's draw-rate input
	pushed uint64 // IDs ever added (wrapping): waiting callers watch it for progress
	// wakeBelow: a take that leaves fewer IDs than this reports a wake; wakeSent: reported.
	wakeBelow uint64
	wakeSent  bool
	// refilled is closed (and reset to nil) by notify; callers create it when they wait.
	refilled chan struct{}
	closed   bool
}

func newIDBuffer() *idBuffer {
	return &idBuffer{wakeBelow: 1}
}

// pop takes one ID: the hot path. wake reports the first crossing of the low-water trigger.
// Caller holds mu.
func (b *idBuffer) pop() (id uint64, ok, wake bool) {
	if b.head < len(b.spans) {
		s := &b.spans[b.head]
		id, ok = s.next, true
		s.next++
		if s.next == s.end {
			b.head++
		}
		b.avail--
		b.drawn++
	}
	if b.avail < b.wakeBelow && !b.wakeSent {
		b.wakeSent = true
		wake = true
	}
	return id, ok, wake
}

// takeRange takes n consecutive IDs from the oldest range that still has n, or nothing.
// Caller holds mu.
func (b *idBuffer) takeRange(n uint64) (first uint64, ok bool) {
	for i := b.head; i < len(b.spans); i++ {
		s := &b.spans[i]
		if s.end-s.next < n {
			continue
		}
		first = s.next
		s.next += n
		if s.next == s.end {
			copy(b.spans[i:], b.spans[i+1:])
			b.spans = b.spans[:len(b.spans)-1]
		}
		b.avail -= n
		b.drawn += n
		return first, true
	}
	return 0, false
}

// wantsRefill reports, once per crossing, that fewer than wakeBelow IDs are left. Caller
// holds mu.
func (b *idBuffer) wantsRefill() bool {
	if b.avail < b.wakeBelow && !b.wakeSent {
		b.wakeSent = true
		return true
	}
	return false
}

// push adds a verified range at the back and wakes waiting callers. Empty ranges are
// ignored. Caller holds mu.
func (b *idBuffer) push(s span) {
	if s.end <= s.next || b.closed {
		return
	}
	if b.head == len(b.spans) {
		b.spans, b.head = b.spans[:0], 0
	} else if b.head > 64 && b.head > len(b.spans)/2 {
		n := copy(b.spans, b.spans[b.head:])
		b.spans, b.head = b.spans[:n], 0
	}
	b.spans = append(b.spans, s)
	b.avail += s.end - s.next
	b.pushed += s.end - s.next
	b.notify()
}

// expire drops ranges asked for at or before cutoff and returns how many IDs it dropped.
// Ranges are mostly in asking order, but a late reply from a stalled server can sit behind
// younger ones, so every range is looked at (a few dozen at most). Caller holds mu.
func (b *idBuffer) expire(cutoff time.Duration) uint64 {
	var dropped uint64
	kept := b.spans[:b.head]
	for _, s := range b.spans[b.head:] {
		if s.asked <= cutoff {
			dropped += s.end - s.next
			continue
		}
		kept = append(kept, s)
	}
	b.spans = kept
	b.avail -= dropped
	return dropped
}

// arm sets the low-water trigger and re-arms it; 0 means "do not wake me" (replies are on
// their way and will). Caller holds mu.
func (b *idBuffer) arm(wakeBelow uint64) {
	b.wakeBelow = wakeBelow
	b.wakeSent = false
}

// waitChan returns the channel the next notify closes. Caller holds mu.
func (b *idBuffer) waitChan() <-chan struct{} {
	if b.refilled == nil {
		b.refilled = make(chan struct{})
	}
	return b.refilled
}

// notify wakes every caller waiting on waitChan. Caller holds mu.
func (b *idBuffer) notify() {
	if b.refilled != nil {
		close(b.refilled)
		b.refilled = nil
	}
}

// close drops every ID, refuses later pushes and wakes waiters. Caller holds mu.
func (b *idBuffer) close() {
	b.closed = true
	b.spans, b.head, b.avail = nil, 0, 0
	b.notify()
}
