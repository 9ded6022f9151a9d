package snowlease

import (
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

func TestComposeThenDecodeRoundTripsAndIDsSortByTickWorkerSequence(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	l := DefaultLayout
	var prev uint64
	var prevKey [3]uint64
	for i := 0; i < 10_000; i++ {
		tick, worker, seq := uint64(rng.Int63n(1<<41)), uint16(rng.Intn(1024)), uint32(rng.Intn(4096))
		id := l.compose(tick, worker, seq)
		p := l.decompose(id)
		if id >= 1<<63 || p.Tick != tick || p.Worker != worker || p.Sequence != seq {
			t.Fatalf("%d/%d/%d -> %d -> %+v", tick, worker, seq, id, p)
		}
		if p.Time.UnixMilli() != int64(DefaultEpochUnixMilli+tick) {
			t.Fatalf("time %v", p.Time)
		}
		key := [3]uint64{tick, uint64(worker), uint64(seq)}
		if i > 0 && (id < prev) != lessKey(key, prevKey) {
			t.Fatalf("order of %v and %v", key, prevKey)
		}
		prev, prevKey = id, key
	}
}

func lessKey(a, b [3]uint64) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return false
}

func TestACustomLayoutDecodesItsOwnIDs(t *testing.T) {
	custom := Layout{EpochUnixMilli: 0, TimestampBits: 39, WorkerBits: 8, SequenceBits: 16}
	id := custom.Compose(123_456, 200, 65_000)
	p := custom.Decode(id)
	if p.Tick != 123_456 || p.Worker != 200 || p.Sequence != 65_000 {
		t.Fatalf("%+v", p)
	}
	if DefaultLayout.Decode(id).Worker == 200 {
		t.Fatal("the default layout must not read a custom layout's worker")
	}
}

func TestPartsReadLikeProtocolMD(t *testing.T) {
	got := DefaultLayout.Decode(DefaultLayout.Compose(1, 7, 42)).String()
	if got != "2024-01-01T00:00:00.001Z worker 7 sequence 42" {
		t.Fatal(got)
	}
	if s := DefaultLayout.String(); s != "41/10/12 epoch 2024-01-01T00:00:00.000Z" {
		t.Fatal(s)
	}
}

func TestInvalidLayoutsAreRefusedWithTheRule(t *testing.T) {
	for _, c := range []struct {
		l    Layout
		want string
	}{
		{Layout{TimestampBits: 41, WorkerBits: 10, SequenceBits: 11}, "must be 63"},
		{Layout{TimestampBits: 0, WorkerBits: 51, SequenceBits: 12}, "at least 1 bit"},
		{Layout{TimestampBits: 20, WorkerBits: 11, SequenceBits: 32}, "sequence_bits must be at most 31"},
		{Layout{TimestampBits: 20, WorkerBits: 17, SequenceBits: 26}, "worker_bits must be at most 16"},
	} {
		if err := c.l.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v", c.l, err)
		}
	}
	if err := DefaultLayout.Validate(); err != nil {
		t.Fatal(err)
	}
	wide := Layout{TimestampBits: 16, WorkerBits: 16, SequenceBits: 31}
	if wide.Validate() != nil || wide.MaxWorker() != 65535 || wide.MaxLease() != 1<<31 {
		t.Fatalf("widest fields: %d %d", wide.MaxWorker(), wide.MaxLease())
	}
}

func TestABulkRunExpandsIntoBlocksThatEachStayInsideOneTickAndNeverWrap(t *testing.T) {
	l := DefaultLayout
	first := l.compose(100, 7, 4000)
	got := l.blocks(first, 96+4096+10)
	want := []run{{first, 96}, {l.compose(101, 7, 0), 4096}, {l.compose(102, 7, 0), 10}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%v", got)
	}
	small := Layout{TimestampBits: 16, WorkerBits: 16, SequenceBits: 31}
	last := small.compose(small.maxTick(), 3, 0)
	var total uint64
	for _, r := range small.blocks(last, ^uint32(0)) {
		total += uint64(r.count)
		if r.firstID < last {
			t.Fatalf("wrapped to %d", r.firstID)
		}
	}
	if total != uint64(small.MaxLease()) {
		t.Fatalf("expanded %d IDs past the last tick", total)
	}
}
