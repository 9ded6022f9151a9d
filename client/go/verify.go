package snowlease

// Checks on what servers send, free of I/O so every rule has a unit test.
//
// The driver runs a WELCOME through checkWelcome before a connection may carry LEASEs, and
// every LEASED reply through checkLeased before its IDs reach the buffer or a caller. A
// failed check is a protocol violation: the driver drops the connection and the IDs are
// never handed out. plan turns the draw rate into refill thresholds.

import (
	"fmt"
	"math"
	"time"
)

// refillHorizon is how much time's worth of IDs, at the current draw rate, the client keeps
// on hand plus on the way: 50 ms, as the Rust client. It covers a failover (a refused
// connect is retried after 25-50 ms, a healthy peer answers within a round trip) and the
// lag bound below, and it is 20 times shorter than the default max age, so IDs are used long
// before they expire.
const refillHorizon = 50 * time.Millisecond

// checkWelcome validates a WELCOME and returns the layout it announces. established is the
// layout of the first server this client accepted: every server must agree with it, or IDs
// handed out by one client could not all be decoded the same way.
func checkWelcome(w welcomeFrame, established *Layout) (Layout, error) {
	if w.version != protocolVersion {
		return Layout{}, fmt.Errorf("WELCOME speaks version %d, this client speaks %d", w.version, protocolVersion)
	}
	l := Layout{EpochUnixMilli: w.epochUnixMs, TimestampBits: w.timestampBits, WorkerBits: w.workerBits, SequenceBits: w.sequenceBits}
	if err := l.Validate(); err != nil {
		return Layout{}, fmt.Errorf("WELCOME announces an invalid layout: %v", err)
	}
	if w.workerID > l.MaxWorker() {
		return Layout{}, fmt.Errorf("WELCOME worker id %d does not fit %d worker bits", w.workerID, w.workerBits)
	}
	if w.maxLease == 0 || w.maxLease > l.MaxLease() {
		return Layout{}, fmt.Errorf("WELCOME max_lease %d is outside 1..%d", w.maxLease, l.MaxLease())
	}
	if established != nil && *established != l {
		return Layout{}, fmt.Errorf("layout %s differs from %s announced by an earlier server; servers behind one client must share a layout", l, *established)
	}
	return l, nil
}

// asked is the oldest outstanding LEASE on a connection.
type asked struct{ requestID, count uint32 }

// checkLeased validates a LEASED reply from worker and returns the end (exclusive) of its
// range. Replies come in request order, so the reply must answer the oldest outstanding
// request; it may carry fewer IDs than asked but never none or more. The range must be IDs of
// that worker within one tick (so it cannot spill into another worker's IDs), and it must
// start at or above prevEnd, the end of the last range accepted from the same worker (hasPrev
// false: none yet): a range below it means the worker's generator went backwards (a restart
// without its state, a duplicated worker id) and its IDs could repeat ones handed out.
func checkLeased(l Layout, worker uint16, a *asked, prevEnd uint64, hasPrev bool, r leasedFrame) (uint64, error) {
	if a == nil {
		return 0, fmt.Errorf("LEASED for request %d with no LEASE outstanding", r.requestID)
	}
	if r.requestID != a.requestID {
		return 0, fmt.Errorf("LEASED answers request %d, but the oldest outstanding is %d (replies must come in order)", r.requestID, a.requestID)
	}
	if r.count == 0 || r.count > a.count {
		return 0, fmt.Errorf("LEASED carries %d IDs for a LEASE of %d", r.count, a.count)
	}
	end := r.firstID + uint64(r.count)
	if r.firstID >= 1<<63 || end > 1<<63 {
		return 0, fmt.Errorf("range %d+%d runs past the 63-bit ID space", r.firstID, r.count)
	}
	p := l.decompose(r.firstID)
	if p.Worker != worker {
		return 0, fmt.Errorf("range %d belongs to worker %d, but the server announced worker %d", r.firstID, p.Worker, worker)
	}
	if uint64(p.Sequence)+uint64(r.count) > uint64(l.MaxLease()) {
		return 0, fmt.Errorf("range %d+%d crosses a tick boundary (sequence %d + %d > %d)", r.firstID, r.count, p.Sequence, r.count, l.MaxLease())
	}
	if hasPrev && r.firstID < prevEnd {
		return 0, fmt.Errorf("range starts at %d, below the end %d of worker %d's previous range; its IDs could repeat", r.firstID, prevEnd, worker)
	}
	return end, nil
}

// refillPlan holds the refill thresholds for one draw rate.
type refillPlan struct {
	// lowMark: below this many IDs (on hand plus counted on the way) the driver leases more,
	lowMark uint64
	// fillTo: until on hand plus on the way reaches this.
	fillTo uint64
}

// plan sizes refills: aim for refillHorizon of IDs at rate per second, at least lowWater and
// at most capacity; refill when half of that is gone. lowMark is at least 1, so an empty
// buffer with nothing on the way always triggers a lease.
func plan(rate float64, lowWater, capacity uint64) refillPlan {
	horizon := uint64(0)
	if h := math.Ceil(rate * refillHorizon.Seconds()); h > 0 { // NaN and negatives stay 0
		horizon = uint64(math.Min(h, float64(math.MaxUint64/2)))
	}
	target := minU64(horizon, capacity)
	if floor := minU64(lowWater, capacity); target < floor {
		target = floor
	}
	low := target / 2
	if low < lowWater {
		low = lowWater
	}
	if low < 1 {
		low = 1
	}
	fill := target
	if fill < low {
		fill = low
	}
	return refillPlan{lowMark: low, fillTo: fill}
}

func minU64(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return b
}
