package snowlease

import (
	"strings"
	"testing"
)

func goodWelcome() welcomeFrame {
	return welcomeFrame{version: 1, workerID: 7, epochUnixMs: DefaultEpochUnixMilli, timestampBits: 41, workerBits: 10, sequenceBits: 12, maxLease: 4096}
}

func TestAWellFormedWelcomeYieldsItsLayout(t *testing.T) {
	l, err := checkWelcome(goodWelcome(), nil)
	if err != nil || l != DefaultLayout {
		t.Fatal(l, err)
	}
	if _, err := checkWelcome(goodWelcome(), &DefaultLayout); err != nil {
		t.Fatal(err)
	}
}

func TestWelcomesWithBadFieldsOrAnotherLayoutAreRefused(t *testing.T) {
	for _, c := range []struct {
		breakIt func(*welcomeFrame)
		want    string
	}{
		{func(w *welcomeFrame) { w.version = 2 }, "version 2"},
		{func(w *welcomeFrame) { w.sequenceBits = 13 }, "invalid layout"},
		{func(w *welcomeFrame) { w.workerID = 1024 }, "does not fit"},
		{func(w *welcomeFrame) { w.maxLease = 0 }, "max_lease 0"},
		{func(w *welcomeFrame) { w.maxLease = 4097 }, "max_lease 4097"},
		{func(w *welcomeFrame) { w.epochUnixMs++ }, "must share a layout"},
	} {
		w := goodWelcome()
		c.breakIt(&w)
		if _, err := checkWelcome(w, &DefaultLayout); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.want, err)
		}
	}
}

func checkReply(prev uint64, hasPrev bool, r leasedFrame) (uint64, error) {
	return checkLeased(DefaultLayout, 7, &asked{requestID: 4, count: 100}, prev, hasPrev, r)
}

func TestAReplyWithinContractIsAcceptedEvenWhenShort(t *testing.T) {
	first := DefaultLayout.compose(1000, 7, 0)
	if end, err := checkReply(0, false, leasedFrame{4, first, 100}); err != nil || end != first+100 {
		t.Fatal(end, err)
	}
	if end, err := checkReply(first, true, leasedFrame{4, first, 1}); err != nil || end != first+1 {
		t.Fatal(end, err)
	}
}

func TestRepliesThatBreakTheContractAreViolations(t *testing.T) {
	l := DefaultLayout
	first := l.compose(1000, 7, 0)
	prevEnd := l.compose(1000, 7, 50)
	for _, c := range []struct {
		name    string
		r       leasedFrame
		prev    bool
		noAsked bool
		want    string
	}{
		{"none", leasedFrame{4, first, 0}, false, false, "for a LEASE of 100"},
		{"more than asked", leasedFrame{4, first, 101}, false, false, "for a LEASE of 100"},
		{"huge", leasedFrame{4, first, ^uint32(0)}, false, false, "for a LEASE of 100"},
		{"wrong request", leasedFrame{5, first, 1}, false, false, "oldest outstanding is 4"},
		{"unasked", leasedFrame{4, first, 1}, false, true, "no LEASE outstanding"},
		{"other worker", leasedFrame{4, l.compose(1000, 8, 0), 10}, false, false, "belongs to worker 8"},
		{"crossing a tick", leasedFrame{4, l.compose(1000, 7, 4090), 10}, false, false, "crosses a tick"},
		{"past 63 bits", leasedFrame{4, 1<<63 - 5, 10}, false, false, "63-bit"},
		{"sign bit", leasedFrame{4, ^uint64(0), 10}, false, false, "63-bit"},
		{"backwards", leasedFrame{4, l.compose(999, 7, 0), 10}, true, false, "could repeat"},
		{"overlapping", leasedFrame{4, l.compose(1000, 7, 49), 10}, true, false, "could repeat"},
	} {
		a := &asked{requestID: 4, count: 100}
		if c.noAsked {
			a = nil
		}
		if _, err := checkLeased(l, 7, a, prevEnd, c.prev, c.r); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if _, err := checkReply(prevEnd, true, leasedFrame{4, prevEnd, 10}); err != nil {
		t.Errorf("a range starting at the previous end is fine: %v", err)
	}
}

func TestRefillsFollowTheRateBetweenLowWaterAndCapacity(t *testing.T) {
	if p := plan(0, 4096, 262_144); p != (refillPlan{4096, 4096}) {
		t.Errorf("idle %+v", p)
	}
	if p := plan(4_000_000, 4096, 262_144); p != (refillPlan{100_000, 200_000}) {
		t.Errorf("busy %+v", p)
	}
	if p := plan(1e12, 4096, 262_144); p.fillTo != 262_144 {
		t.Errorf("flat out %+v", p)
	}
	nan := 0.0
	if p := plan(nan/nan, 0, 10); p.lowMark != 1 {
		t.Errorf("an empty buffer always refills: %+v", p)
	}
	if p := plan(1e6, 10, 10); p.fillTo != 10 {
		t.Errorf("capacity %+v", p)
	}
}
