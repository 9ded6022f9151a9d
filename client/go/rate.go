package snowlease

// The draw-rate estimate: how many IDs per second callers take, from which the driver sizes
// its refills. The driver feeds in the IDs drawn since its last look (the buffer's counter)
// with the time; counts accumulate into a window of at least minRateWindow, and each closed
// window updates an exponentially weighted moving average that rises quickly and falls
// slowly: running dry costs callers a round trip, holding a little too much only costs IDs
// that expire. The constants are the Rust client's, for the same reasons.

import (
	"math"
	"time"
)

const (
	// minRateWindow is the shortest window turned into a sample: 5 ms. The driver may look
	// many times per millisecond while replies stream in; a window of microseconds holding
	// one 4,096-ID take would read as billions per second.
	minRateWindow = 5 * time.Millisecond
	// tauRise is the time constant while demand grows: 20 ms. The buffer holds ~50 ms of
	// IDs, so the estimate reaches 92 % of a new, higher rate (2.5 time constants) before the
	// old buffer runs out.
	tauRise = 20 * time.Millisecond
	// tauFall is the time constant while demand shrinks: 500 ms. Short lulls (a GC pause, a
	// batch job between pages) do not shrink the buffer; a real drop is followed within about
	// a second, before the default 1 s max age would throw IDs away.
	tauFall = 500 * time.Millisecond
)

// rateEstimator: see the file comment.
type rateEstimator struct {
	rate        float64 // IDs per second
	windowStart time.Duration
	windowDrawn uint64
}

// observe records drawn more IDs taken by now and returns the estimate in IDs per second.
func (r *rateEstimator) observe(drawn uint64, now time.Duration) float64 {
	r.windowDrawn += drawn
	dt := now - r.windowStart
	if dt < minRateWindow {
		return r.rate
	}
	sample := float64(r.windowDrawn) / dt.Seconds()
	tau := tauFall
	if sample > r.rate {
		tau = tauRise
	}
	alpha := 1 - math.Exp(-dt.Seconds()/tau.Seconds())
	r.rate += alpha * (sample - r.rate)
	r.windowStart, r.windowDrawn = now, 0
	return r.rate
}
