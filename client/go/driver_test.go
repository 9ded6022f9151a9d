package snowlease

// The refill decision, without sockets: a driver with hand-made connections, driven with
// explicit times.

import (
	"testing"
	"time"
)

// testDriver is a driver with n ready connections (workers 1..n) and no goroutines.
func testDriver(t *testing.T, n int, opts ...Option) *driver {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	targets, err := cfg.validate([]string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	d := newDriver(&cfg, targets[:1], &shared{buf: newIDBuffer()})
	d.slots = nil
	for i := 0; i < n; i++ {
		c := &liveConn{id: uint64(i + 1), h: newConnHandle(), ready: true, worker: uint16(i + 1), maxLease: 4096, nextReqID: 1}
		d.slots = append(d.slots, &slot{addr: "127.0.0.1:" + string(rune('1'+i)), listed: true, conn: c})
	}
	d.sh.layout.Store(&DefaultLayout)
	return d
}

// ask puts n outstanding LEASEs of 4,096 on connection i, sent at sent.
func ask(d *driver, i, n int, sent time.Duration) {
	for k := 0; k < n; k++ {
		d.sendLease(i, 4096, nil, sent)
	}
	d.slots[i].conn.wbuf = nil
}

func TestALaggingConnectionStopsCountingAndDemandMovesToTheOneThatAnswers(t *testing.T) {
	d := testDriver(t, 2, WithLowWater(1<<16))
	ask(d, 0, 16, 0)
	silent, prompt := d.slots[0].conn, d.slots[1].conn

	d.markLagging(LagFloor / 2)
	d.refill(LagFloor / 2)
	if prompt.inFlight() != 0 {
		t.Fatalf("before the lag floor the silent connection's 65,536 IDs count: %d LEASEs sent", prompt.inFlight())
	}
	d.markLagging(LagFloor + time.Millisecond)
	d.refill(LagFloor + time.Millisecond)
	if !silent.lagging || prompt.inFlight() != 16 || silent.inFlight() != 16 {
		t.Fatalf("lagging %v, prompt %d, silent %d LEASEs", silent.lagging, prompt.inFlight(), silent.inFlight())
	}
	if got := d.countedInFlight(d.anyPrompt()); got != 16*4096 {
		t.Fatalf("counted %d IDs on the way", got)
	}
}

func TestWhenEveryConnectionLagsTheirRequestsCountAgain(t *testing.T) {
	d := testDriver(t, 2, WithLowWater(1<<16))
	ask(d, 0, 8, 0)
	ask(d, 1, 8, 0)
	now := time.Second
	d.markLagging(now)
	if d.anyPrompt() {
		t.Fatal("both connections lag")
	}
	if got := d.countedInFlight(false); got != 16*4096 {
		t.Fatalf("counted %d", got)
	}
	d.refill(now)
	if d.slots[0].conn.inFlight()+d.slots[1].conn.inFlight() != 16 {
		t.Fatal("asked more of connections that do not answer, though enough is on the way")
	}
}

func TestAConnectionThatAnswersAgainIsPromptAgainAndItsRangeIsUsed(t *testing.T) {
	d := testDriver(t, 2)
	ask(d, 0, 2, 0)
	c := d.slots[0].conn
	d.markLagging(time.Second)
	if !c.lagging {
		t.Fatal("not lagging")
	}
	first := DefaultLayout.compose(tickNow(), 1, 0)
	if err := d.onFrame(0, leasedFrame{requestID: 1, firstID: first, count: 4096}); err != nil {
		t.Fatal(err)
	}
	d.markLagging(d.now())
	if c.lagging || c.inFlight() != 1 {
		t.Fatalf("lagging %v with %d outstanding after a reply", c.lagging, c.inFlight())
	}
	d.sh.buf.mu.Lock()
	id, ok, _ := d.sh.buf.pop()
	d.sh.buf.mu.Unlock()
	if !ok || id != first {
		t.Fatal("the late range was not buffered")
	}
}

func TestTheLagLimitFollowsAConnectionsUsualReplyTimeWithinItsBounds(t *testing.T) {
	d := testDriver(t, 1, WithRequestTimeout(500*time.Millisecond))
	c := d.slots[0].conn
	for _, tc := range []struct{ usual, want time.Duration }{
		{0, LagFloor},
		{time.Millisecond, LagFloor},
		{5 * time.Millisecond, 20 * time.Millisecond},
		{time.Second, 500 * time.Millisecond},
	} {
		c.usual = tc.usual
		if got := d.lagLimit(c); got != tc.want {
			t.Errorf("usual %v: limit %v, want %v", tc.usual, got, tc.want)
		}
	}
}

func TestALostConnectionMakesItsNameResolveAgainOnTheBackoffSchedule(t *testing.T) {
	d := testDriver(t, 0, WithBackoff(10*time.Millisecond, time.Second))
	d.endpoints = []*endpoint{{t: target{host: "pods.test", port: "7609"}, resolved: true, nextResolve: time.Hour}}
	d.slots = []*slot{{addr: "10.0.0.1:7609", listed: true, conn: &liveConn{h: newConnHandle(), ready: true}}}
	now := time.Minute
	d.fail(0, &ConnError{Op: "closed"}, now)
	ep := d.endpoints[0]
	if !ep.inTrouble || ep.nextResolve != now {
		t.Fatalf("a loss must resolve at once: %+v", ep)
	}
	var steps []time.Duration
	for i := 0; i < 12; i++ {
		d.onResolved(event{kind: evResolved, addrs: []string{"10.0.0.1:7609"}}, now)
		steps = append(steps, ep.nextResolve-now)
	}
	if steps[0] > 10*time.Millisecond || steps[11] < 500*time.Millisecond || steps[11] > time.Second {
		t.Fatalf("early resolutions %v", steps)
	}
	d.onResolved(event{kind: evResolved, addrs: []string{"10.0.0.1:7609"}}, now+troubleWindow)
	if ep.inTrouble || ep.nextResolve != now+troubleWindow+DefaultResolveInterval {
		t.Fatalf("after the trouble window the interval applies again: %+v", ep)
	}
}

func TestAFarServerAnsweringPipelinedBatchesIsNotCalledLagging(t *testing.T) {
	d := testDriver(t, 1)
	c := d.slots[0].conn
	const rtt = 40 * time.Millisecond
	c.usual = rtt // the HELLO/WELCOME round trip
	now := time.Duration(0)
	for batch := 0; batch < 20; batch++ {
		ask(d, 0, 16, now)
		now += rtt // the first reply waits a round trip, the rest follow 10 µs apart
		for k := 0; k < 16; k++ {
			o := c.popOutstanding()
			c.noteReply(now, o.sent)
			now += 10 * time.Microsecond
		}
		now += time.Millisecond
	}
	ask(d, 0, 16, now)
	d.markLagging(now + rtt + rtt/4)
	if c.lagging {
		t.Fatalf("lagging 1.25 round trips after a batch went out (limit %v)", d.lagLimit(c))
	}
	d.markLagging(now + d.lagLimit(c) + time.Millisecond)
	if !c.lagging {
		t.Fatal("a connection silent past its limit is lagging")
	}
}
