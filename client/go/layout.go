package snowlease

import (
	"fmt"
	"time"
)

// DefaultEpochUnixMilli is 2024-01-01T00:00:00Z, the servers' default epoch.
const DefaultEpochUnixMilli = 1_704_067_200_000

// Layout is the bit layout of an ID as a server's WELCOME announces it:
//
//	+---+------------------------------------------+-------------+---------------+
//	| 0 | timestamp: ms since the epoch (41 bits)  | worker (10) | sequence (12) |
//	+---+------------------------------------------+-------------+---------------+
//	 63  62                                      22  21        12  11            0
//
// The widths shown are the defaults: 2^41 ms (about 69.7 years), 1,024 workers, 4,096 IDs per
// millisecond per worker. A client decodes IDs with the layout its servers announced, never
// with an assumed one.
type Layout struct {
	// EpochUnixMilli is the Unix time in milliseconds that timestamp 0 stands for.
	EpochUnixMilli uint64
	// TimestampBits, WorkerBits and SequenceBits are the field widths; they add up to 63.
	TimestampBits, WorkerBits, SequenceBits uint8
}

// DefaultLayout is the servers' default: 41/10/12 bits from 2024-01-01.
var DefaultLayout = Layout{EpochUnixMilli: DefaultEpochUnixMilli, TimestampBits: 41, WorkerBits: 10, SequenceBits: 12}

// Parts is an ID taken apart.
type Parts struct {
	// Time is the millisecond the ID's timestamp stands for, in UTC.
	Time time.Time
	// Tick is the raw timestamp field: milliseconds since the layout's epoch.
	Tick uint64
	// Worker is the worker id of the server that issued the ID.
	Worker uint16
	// Sequence is the ID's position inside its millisecond.
	Sequence uint32
}

// String reads like protocol.md's annotations: "2025-11-28T00:00:00.000Z worker 7 sequence 0".
func (p Parts) String() string {
	return fmt.Sprintf("%s worker %d sequence %d", formatUnixMilli(uint64(p.Time.UnixMilli())), p.Worker, p.Sequence)
}

// Validate checks the rules of protocol.md section 8: widths add up to 63, each at least 1,
// sequence at most 31 bits, worker at most 16 bits.
func (l Layout) Validate() error {
	sum := int(l.TimestampBits) + int(l.WorkerBits) + int(l.SequenceBits)
	switch {
	case sum != 63:
		return fmt.Errorf("timestamp_bits + worker_bits + sequence_bits must be 63, got %d + %d + %d = %d",
			l.TimestampBits, l.WorkerBits, l.SequenceBits, sum)
	case l.TimestampBits == 0 || l.WorkerBits == 0 || l.SequenceBits == 0:
		return fmt.Errorf("every field must be at least 1 bit wide, got %d/%d/%d",
			l.TimestampBits, l.WorkerBits, l.SequenceBits)
	case l.SequenceBits > 31:
		return fmt.Errorf("sequence_bits must be at most 31, got %d", l.SequenceBits)
	case l.WorkerBits > 16:
		return fmt.Errorf("worker_bits must be at most 16, got %d", l.WorkerBits)
	}
	return nil
}

// String is "41/10/12 epoch 2024-01-01T00:00:00.000Z".
func (l Layout) String() string {
	return fmt.Sprintf("%d/%d/%d epoch %s", l.TimestampBits, l.WorkerBits, l.SequenceBits, formatUnixMilli(l.EpochUnixMilli))
}

// MaxLease is the number of IDs per tick per worker (4,096 by default), the largest LEASE.
func (l Layout) MaxLease() uint32 { return 1 << l.SequenceBits }

// MaxWorker is the highest worker id the layout holds (1,023 by default).
func (l Layout) MaxWorker() uint16 { return uint16(1<<l.WorkerBits - 1) }

func (l Layout) maxTick() uint64 { return 1<<l.TimestampBits - 1 }

// Decode takes an ID apart. IDs are positive int64s; a negative id is read as its 64 bits.
func (l Layout) Decode(id int64) Parts {
	return l.decompose(uint64(id))
}

func (l Layout) decompose(id uint64) Parts {
	tick := id >> (l.WorkerBits + l.SequenceBits) & l.maxTick()
	ms := l.EpochUnixMilli + tick
	return Parts{
		Time:     time.UnixMilli(int64(ms)).UTC(),
		Tick:     tick,
		Worker:   uint16(id >> l.SequenceBits & uint64(l.MaxWorker())),
		Sequence: uint32(id & uint64(l.MaxLease()-1)),
	}
}

// Compose puts an ID together from its fields; out-of-range fields are masked.
func (l Layout) Compose(tick uint64, worker uint16, sequence uint32) int64 {
	return int64(l.compose(tick, worker, sequence))
}

func (l Layout) compose(tick uint64, worker uint16, sequence uint32) uint64 {
	return (tick&l.maxTick())<<(l.WorkerBits+l.SequenceBits) |
		uint64(worker&l.MaxWorker())<<l.SequenceBits |
		uint64(sequence&(l.MaxLease()-1))
}

// position is an ID's place in its worker's sequence space, tick << sequence_bits | sequence;
// it grows by one per ID a worker issues.
func (l Layout) position(id uint64) uint64 {
	p := l.decompose(id)
	return p.Tick<<l.SequenceBits | uint64(p.Sequence)
}

// blocks expands a BULK_LEASED run (count IDs at consecutive positions of first's worker)
// into runs of consecutive integers, each inside one tick. It stops at the layout's last
// tick, so a hostile run never wraps into small IDs.
func (l Layout) blocks(first uint64, count uint32) []run {
	worker := l.decompose(first).Worker
	perTick := uint64(l.MaxLease())
	pos, left := l.position(first), uint64(count)
	var out []run
	for left > 0 && pos>>l.SequenceBits <= l.maxTick() {
		take := perTick - pos&(perTick-1)
		if take > left {
			take = left
		}
		id := l.compose(pos>>l.SequenceBits, worker, uint32(pos&(perTick-1)))
		out = append(out, run{firstID: id, count: uint32(take)})
		pos += take
		left -= take
	}
	return out
}

// formatUnixMilli is RFC 3339 UTC with milliseconds, as the server and protocol.md write it.
func formatUnixMilli(ms uint64) string {
	return time.UnixMilli(int64(ms)).UTC().Format("2006-01-02T15:04:05.000Z")
}
