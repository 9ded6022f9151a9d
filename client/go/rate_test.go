package snowlease

import (
	"math"
	"testing"
	"time"
)

func feed(r *rateEstimator, now *time.Duration, perMs uint64, ms int) float64 {
	for i := 0; i < ms; i++ {
		*now += time.Millisecond
		r.observe(perMs, *now)
	}
	return r.rate
}

func TestASteadyRateIsLearned(t *testing.T) {
	var r rateEstimator
	var now time.Duration
	if rate := feed(&r, &now, 1000, 500); math.Abs(rate-1e6) > 1e4 {
		t.Fatal(rate)
	}
}

func TestARiseIsFollowedWithinFiftyMillisecondsAndAFallSlowly(t *testing.T) {
	var r rateEstimator
	var now time.Duration
	feed(&r, &now, 10, 1000)
	if rate := feed(&r, &now, 4000, 50); rate < 0.85*4e6 {
		t.Fatal("rise", rate)
	}
	var f rateEstimator
	now = 0
	feed(&f, &now, 1000, 500)
	if rate := feed(&f, &now, 0, 100); rate < 750_000 {
		t.Fatal("fell too fast", rate)
	}
	if rate := feed(&f, &now, 0, 1900); rate > 30_000 {
		t.Fatal("fell too slowly", rate)
	}
}

func TestShortWindowsAccumulateInsteadOfSpiking(t *testing.T) {
	var r rateEstimator
	for i := 1; i <= 4; i++ {
		if rate := r.observe(4096, time.Duration(i)*10*time.Microsecond); rate != 0 {
			t.Fatal(rate)
		}
	}
	// 16,384 IDs over 5 ms is 3.3 M/s; one 5 ms step covers 22 % of the way there.
	if rate := r.observe(0, minRateWindow); rate < 600_000 || rate > 900_000 {
		t.Fatal(rate)
	}
}
