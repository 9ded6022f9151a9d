package snowlease

// Fake servers that break the protocol on purpose: whatever they send, the client must give
// a clear error or drop the connection, and never hand out a wrong ID.

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const fakeWorker = 5

// fakeServer greets every connection with welcome (nil: never answers at all) and answers
// LEASE number n (counted across connections) with whatever answer returns (nil: no reply).
type fakeServer struct {
	addr    string
	ln      net.Listener
	welcome []byte
	answer  func(n int, req leaseFrame) []byte
	leases  atomic.Int64
	conns   atomic.Int64 // connections open now
	mu      sync.Mutex
	open    []net.Conn
}

func fakeWelcome(worker uint16) []byte {
	b, _ := appendFrame(nil, welcomeFrame{
		version: 1, workerID: worker, epochUnixMs: DefaultEpochUnixMilli, timestampBits: 41,
		workerBits: 10, sequenceBits: 12, maxLease: 4096, serverUnixMs: uint64(time.Now().UnixMilli()),
	})
	return b
}

func startFake(t testing.TB, worker uint16, answer func(n int, req leaseFrame) []byte) *fakeServer {
	return startFakeWith(t, fakeWelcome(worker), answer)
}

func startFakeWith(t testing.TB, welcome []byte, answer func(n int, req leaseFrame) []byte) *fakeServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{addr: ln.Addr().String(), ln: ln, welcome: welcome, answer: answer}
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *fakeServer) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.open = append(f.open, c)
		f.mu.Unlock()
		go f.serve(c)
	}
}

func (f *fakeServer) serve(c net.Conn) {
	f.conns.Add(1)
	defer f.conns.Add(-1)
	defer c.Close()
	var in []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		in = append(in, buf[:n]...)
		for {
			req, used, err := decodeRequest(in)
			if err != nil || used == 0 {
				break
			}
			in = in[used:]
			var reply []byte
			switch r := req.(type) {
			case helloFrame:
				reply = f.welcome
			case leaseFrame:
				reply = f.answer(int(f.leases.Add(1)-1), r)
			}
			if reply != nil {
				if _, err := c.Write(reply); err != nil {
					return
				}
			}
		}
	}
}

func (f *fakeServer) close() {
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.open {
		c.Close()
	}
}

func tickNow() uint64 { return uint64(time.Now().UnixMilli()) - DefaultEpochUnixMilli }

func leased(requestID uint32, first uint64, count uint32) []byte {
	return appendLeased(nil, requestID, first, count)
}

// strict is a small buffer and a short timeout, so a client that gets no usable reply gives
// up quickly.
func strict() []Option {
	return []Option{WithBufferCapacity(100), WithLowWater(10), WithTimeout(400 * time.Millisecond), WithBackoff(10*time.Millisecond, 50*time.Millisecond)}
}

// drain draws until the client gives up; it returns what was handed out and the error.
func drain(t *testing.T, c *Client) ([]int64, error) {
	var ids []int64
	for i := 0; i < 100_000; i++ {
		id, err := c.NextID(context.Background())
		if err != nil {
			return ids, err
		}
		ids = append(ids, id)
	}
	t.Fatal("the client never ran dry")
	return nil, nil
}

func TestRepliesThatBreakTheContractAreNeverHandedOut(t *testing.T) {
	l := DefaultLayout
	for _, c := range []struct {
		name   string
		answer func(n int, r leaseFrame) []byte
		want   string
	}{
		{"more IDs than asked", func(_ int, r leaseFrame) []byte {
			return leased(r.requestID, l.compose(tickNow(), fakeWorker, 0), r.count+1)
		}, "for a LEASE of"},
		{"no IDs", func(_ int, r leaseFrame) []byte { return leased(r.requestID, l.compose(tickNow(), fakeWorker, 0), 0) }, "carries 0 IDs"},
		{"the wrong request id", func(_ int, r leaseFrame) []byte {
			return leased(r.requestID+1, l.compose(tickNow(), fakeWorker, 0), r.count)
		}, "oldest outstanding"},
		{"another worker's IDs", func(_ int, r leaseFrame) []byte {
			return leased(r.requestID, l.compose(tickNow(), fakeWorker+1, 0), r.count)
		}, "belongs to worker 6"},
		{"a range crossing a tick", func(_ int, r leaseFrame) []byte {
			return leased(r.requestID, l.compose(tickNow(), fakeWorker, 4090), r.count)
		}, "crosses a tick"},
		{"a bad length prefix", func(int, leaseFrame) []byte { return []byte{0, 0, 0x13, 0x88, opLeased} }, "frame length 5000"},
		{"a body of the wrong size", func(int, leaseFrame) []byte { return []byte{0, 0, 0, 2, opLeased, 0} }, "LEASED body must be 16 bytes"},
		{"an unknown opcode", func(int, leaseFrame) []byte { return []byte{0, 0, 0, 1, 0x99} }, "unknown opcode 0x99"},
		{"an unasked PONG", func(int, leaseFrame) []byte { return mustEncode(t, pongFrame{1}) }, "PONG answers nothing"},
		{"a BULK_LEASED on version 1", func(_ int, r leaseFrame) []byte {
			return mustEncode(t, bulkLeasedFrame{r.requestID, []run{{l.compose(tickNow(), fakeWorker, 0), r.count}}})
		}, "BULK_LEASED answers nothing"},
		{"a second WELCOME", func(int, leaseFrame) []byte { return fakeWelcome(fakeWorker) }, "second WELCOME"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, fakeWorker, c.answer)
			client := dial(t, []string{f.addr}, strict()...)
			ids, err := drain(t, client)
			if len(ids) != 0 {
				t.Fatalf("handed out %d IDs, the first %d", len(ids), ids[0])
			}
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("%v", err)
			}
		})
	}
}

func TestARangeBelowOrOverlappingAnEarlierOneIsRejectedEvenAfterAReconnect(t *testing.T) {
	l := DefaultLayout
	start := tickNow()
	for name, later := range map[string]uint64{
		"backwards":   l.compose(start-10, fakeWorker, 0),
		"overlapping": l.compose(start, fakeWorker, 50),
	} {
		t.Run(name, func(t *testing.T) {
			// The first LEASE gets a good range; every later one, on any connection, a range
			// below its end, as a server restarted without its state behind a stepped-back
			// clock (or a second process with the same worker id) would send.
			f := startFake(t, fakeWorker, func(n int, r leaseFrame) []byte {
				if n == 0 {
					return leased(r.requestID, l.compose(start, fakeWorker, 0), 100)
				}
				return leased(r.requestID, later, r.count)
			})
			client := dial(t, []string{f.addr}, strict()...)
			ids, err := drain(t, client)
			good := int64(l.compose(start, fakeWorker, 0))
			if len(ids) != 100 || ids[0] != good || ids[99] != good+99 {
				t.Fatalf("handed out %d IDs: %v...", len(ids), ids[:minInt(len(ids), 3)])
			}
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "could repeat") {
				t.Fatalf("%v", err)
			}
		})
	}
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func TestAnErrorReplyEndsTheConnectionWithTheServersCode(t *testing.T) {
	f := startFake(t, fakeWorker, func(_ int, r leaseFrame) []byte {
		return mustEncode(t, errorFrame{r.requestID, CodeUnavailable, "the layout's timestamp field ran out"})
	})
	client := dial(t, []string{f.addr}, strict()...)
	ids, err := drain(t, client)
	var se *ServerError
	if len(ids) != 0 || !errors.As(err, &se) || se.Code != CodeUnavailable || !IsRetryable(err) {
		t.Fatalf("%d IDs, %v", len(ids), err)
	}
}

func TestWelcomesThatCannotBeTrustedFailDialWithTheReason(t *testing.T) {
	bad := fakeWelcome(fakeWorker)
	bad[5+14] = 13 // sequence_bits 13: the widths no longer add up to 63
	f := startFakeWith(t, bad, func(int, leaseFrame) []byte { return nil })
	_, err := Dial(context.Background(), []string{f.addr}, strict()...)
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "invalid layout") {
		t.Fatalf("%v", err)
	}
	notWelcome := startFakeWith(t, mustEncode(t, pongFrame{1}), nil)
	_, err = Dial(context.Background(), []string{notWelcome.addr}, strict()...)
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "PONG in reply to HELLO") {
		t.Fatalf("%v", err)
	}
}

func TestAServerThatNeverGreetsTimesOutTheConnect(t *testing.T) {
	mute := startFakeWith(t, nil, nil)
	_, err := Dial(context.Background(), []string{mute.addr}, WithConnectTimeout(100*time.Millisecond), WithTimeout(500*time.Millisecond), WithBackoff(10*time.Millisecond, 20*time.Millisecond))
	var ce *ConnError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &ce) || !strings.Contains(ce.Error(), "no answer within 100ms") {
		t.Fatalf("%v", err)
	}
}

func TestTwoAddressesReachingOneWorkerAreNotBothUsed(t *testing.T) {
	l := DefaultLayout
	var next atomic.Uint64
	next.Store(l.compose(tickNow(), fakeWorker, 0))
	answer := func(_ int, r leaseFrame) []byte {
		// One worker's generator shared by both fakes: one tick per LEASE.
		tick := uint64(1) << (l.WorkerBits + l.SequenceBits)
		return leased(r.requestID, next.Add(tick)-tick, r.count)
	}
	a, b := startFake(t, fakeWorker, answer), startFake(t, fakeWorker, answer)
	client := dial(t, []string{a.addr, b.addr}, quick()...)
	set, me := newIDSet(client.Layout()), newCaller()
	for i := 0; i < 2000; i++ {
		if err := me.draw(client, set); err != nil {
			t.Fatal(err)
		}
	}
	set.check(t)
	if a.leases.Load() > 0 && b.leases.Load() > 0 {
		t.Fatalf("both addresses of worker %d were used: %d and %d LEASEs", fakeWorker, a.leases.Load(), b.leases.Load())
	}
}

func writeFile(path, text string) error { return os.WriteFile(path, []byte(text), 0o600) }
