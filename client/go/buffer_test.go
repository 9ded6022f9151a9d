package snowlease

import (
	"testing"
	"time"
)

func popAll(b *idBuffer) []uint64 {
	var out []uint64
	for {
		id, ok, _ := b.pop()
		if !ok {
			return out
		}
		out = append(out, id)
	}
}

func TestPopDrainsRangesOldestFirstThenReportsEmpty(t *testing.T) {
	b := newIDBuffer()
	b.push(span{10, 12, 0})
	b.push(span{100, 101, 0})
	if got := popAll(b); len(got) != 3 || got[0] != 10 || got[1] != 11 || got[2] != 100 {
		t.Fatal(got)
	}
	if b.avail != 0 || b.drawn != 3 || b.pushed != 3 {
		t.Fatal(b.avail, b.drawn, b.pushed)
	}
}

func TestTakeRangeUsesTheFirstRangeBigEnoughAndKeepsTheRest(t *testing.T) {
	b := newIDBuffer()
	b.push(span{0, 2, 0})
	b.push(span{100, 110, 0})
	for _, want := range []uint64{100, 105} {
		if first, ok := b.takeRange(5); !ok || first != want {
			t.Fatal(first, ok)
		}
	}
	if _, ok := b.takeRange(3); ok || b.avail != 2 {
		t.Fatal("took a range that was not there")
	}
	if got := popAll(b); len(got) != 2 || got[0] != 0 {
		t.Fatal(got)
	}
}

func TestExpireDropsOnlyRangesReceivedByTheCutoff(t *testing.T) {
	b := newIDBuffer()
	b.push(span{0, 4, time.Millisecond})
	b.pop()
	b.push(span{10, 14, 2 * time.Millisecond})
	if n := b.expire(time.Millisecond); n != 3 || b.avail != 4 {
		t.Fatal(n, b.avail)
	}
	if id, _, _ := b.pop(); id != 10 {
		t.Fatal(id)
	}
	if n := b.expire(2 * time.Millisecond); n != 3 || len(popAll(b)) != 0 {
		t.Fatal(n)
	}
}

func TestTheLowWaterWakeFiresOncePerArming(t *testing.T) {
	b := newIDBuffer()
	b.push(span{0, 10, 0})
	b.arm(8)
	if _, _, wake := b.pop(); wake {
		t.Fatal("9 left, not below 8")
	}
	b.pop()
	if _, _, wake := b.pop(); !wake {
		t.Fatal("7 left")
	}
	if _, _, wake := b.pop(); wake {
		t.Fatal("already reported")
	}
	b.arm(8)
	if !b.wantsRefill() {
		t.Fatal("re-armed while still low")
	}
	b.arm(0)
	popAll(b)
	if b.wantsRefill() {
		t.Fatal("disarmed")
	}
}

func TestExpireAlsoDropsAnOldRangeBehindYoungerOnes(t *testing.T) {
	b := newIDBuffer()
	b.push(span{0, 4, 5 * time.Millisecond})
	b.push(span{10, 14, time.Millisecond}) // a late reply to an early request
	b.push(span{20, 24, 6 * time.Millisecond})
	if n := b.expire(2 * time.Millisecond); n != 4 || b.avail != 8 {
		t.Fatal(n, b.avail)
	}
	if got := popAll(b); len(got) != 8 || got[4] != 20 {
		t.Fatal(got)
	}
}

func TestWaitersAreWokenByAPushAndAClosedBufferRefusesPushes(t *testing.T) {
	b := newIDBuffer()
	ch := b.waitChan()
	b.push(span{5, 5, 0}) // empty: ignored, nobody woken
	select {
	case <-ch:
		t.Fatal("woken by an empty range")
	default:
	}
	b.push(span{5, 9, 0})
	<-ch
	b.close()
	b.push(span{20, 30, 0})
	if b.avail != 0 || len(popAll(b)) != 0 {
		t.Fatal("a closed buffer took IDs")
	}
}

func TestTheQueueCompactsInsteadOfGrowingForever(t *testing.T) {
	b := newIDBuffer()
	next := uint64(0)
	for i := 0; i < 100_000; i++ {
		b.push(span{next, next + 2, 0})
		next += 2
		b.pop()
		if i%2 == 0 {
			b.pop()
		}
	}
	if cap(b.spans) > 1<<17 {
		t.Fatalf("queue grew to %d", cap(b.spans))
	}
	left := b.avail
	got := popAll(b)
	if uint64(len(got)) != left || got[len(got)-1] != next-1 {
		t.Fatal(len(got), left)
	}
}
