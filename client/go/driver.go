package snowlease

// The driver: one goroutine per Client that turns callers' demand into few large LEASE
// requests.
//
//	callers (any goroutines)           driver goroutine                    servers
//	NextID / Lease --pop--> [ idBuffer: verified ranges ] <--push-- verified LEASED
//	   |  below low water / empty: wake --> plans LEASEs, writes them --> (one reader
//	   '--- Lease(n) too big for the buffer: command ------------------>  goroutine
//	                                                                       per server)
//
// Callers never touch the network. They pop IDs from the buffer; when a take leaves it below
// the driver's trigger, or a caller finds it empty, they poke wake. The driver wakes on that,
// on frames and closures reported by connection goroutines, on resolutions, on direct-lease
// commands and on a timer. Each pass it
//
//  1. applies what arrived: WELCOMEs and LEASED replies are verified (verify.go), good ranges
//     go to the buffer (or to a Lease caller), and anything that breaks the contract drops
//     the connection without handing out its IDs (replies.go);
//  2. drops ranges older than the max age, updates the draw-rate estimate, times out
//     connections silent past the request timeout, and marks lagging ones (below);
//  3. re-resolves names and reconnects lost servers whose jittered backoff has passed
//     (slots.go);
//  4. sends direct leases, then, if IDs on hand plus on the way are below the low mark,
//     pipelines maximal LEASEs to the least-busy connections (at most max-in-flight each)
//     until the rate-sized target is covered, writes each connection's batch with one
//     write, and re-arms the buffer's trigger.
//
// Issue 16: a connection is lagging when its oldest outstanding LEASE has waited more than
// max(LagFloor, LagFactor x its usual wait for a reply) (at most the request timeout). While
// another ready connection is not lagging, a lagging connection's requests do not count as
// IDs on the way and it is given no new ones, so demand moves to the servers that answer
// within LagFloor plus one round trip, before the buffer's low mark (25 ms of IDs) runs out.
// Its replies are still used if they come; past the request timeout it is dropped. A
// lagging or lost connection also makes its name re-resolve on the backoff schedule.
//
// All connection state lives in this goroutine, so it needs no locks of its own; the only
// lock it shares with callers is the buffer's, taken a few times per pass.

import (
	"math/rand"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// eventQueue: capacity of the channel from connection goroutines to the driver, 1,024
	// events: the replies of 64 connections with 16 LEASEs in flight each, so it fills only
	// if a server floods frames, and then that server is read no faster than it is checked.
	eventQueue = 1024
	// eventBatch: events applied per pass before refilling, 256, so one refill decision
	// covers a burst of replies yet a flood cannot keep the driver from refilling for long.
	eventBatch = 256
	// maxTick: the longest housekeeping period, 100 ms: request timeouts (2 s) are noticed
	// within 5 % of their length. The period is max age / 8 when shorter.
	maxTick = 100 * time.Millisecond
)

// shared is what callers and the driver both see.
type shared struct {
	buf    *idBuffer
	layout atomic.Pointer[Layout] // set by the first accepted WELCOME
	mu     sync.Mutex             // guards lastErr and fatal
	// lastErr is the most recent failure, reported to callers who time out.
	lastErr error
	// fatal is set while every server refuses this client for a reason that retrying
	// cannot fix (a wrong token, not a snowlease server, an untrusted certificate).
	fatal error
}

func (s *shared) problems() (last, fatal error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr, s.fatal
}

type eventKind int

const (
	evResolved eventKind = iota
	evConnected
	evFrame
	evClosed
)

// event is what resolver and connection goroutines report.
type event struct {
	kind     eventKind
	endpoint int           // evResolved
	addrs    []string      // evResolved: host:port, deduplicated
	conn     uint64        // evConnected, evFrame, evClosed
	frame    frame         // evConnected (the first frame), evFrame
	rtt      time.Duration // evConnected: HELLO to first frame
	err      error         // evResolved, evClosed
}

// directLease is a Lease call the buffer could not serve.
type directLease struct {
	count uint32
	reply chan leaseResult // buffered 1
	// state: 0 pending, 1 answered, 2 abandoned by the caller (its IDs go to the buffer).
	state atomic.Int32
}

type leaseResult struct {
	first uint64
	count uint32
	err   error
}

// deliver hands the result to the caller; false if the caller gave up.
func (l *directLease) deliver(r leaseResult) bool {
	if !l.state.CompareAndSwap(0, 1) {
		return false
	}
	l.reply <- r
	return true
}

// driver: see the file comment.
type driver struct {
	cfg      *config
	sh       *shared
	events   chan event
	wake     chan struct{} // buffered 1: callers poke it without blocking
	commands chan *directLease
	done     chan struct{} // closed by Client.Close
	stopped  chan struct{} // closed when run returns
	start    time.Time     // the monotonic origin of every time.Duration "now"
	rng      *rand.Rand

	endpoints  []*endpoint
	slots      []*slot
	nextConnID uint64
	lastEnd    map[uint16]uint64 // end of the last range accepted per worker, across reconnects
	rate       rateEstimator
	drawnSeen  uint64
	direct     []*directLease
	cursor     int // where pick starts, so ties rotate across servers
	tick       time.Duration
	nextTick   time.Duration
	hello      []byte
}

func newDriver(cfg *config, targets []target, sh *shared) *driver {
	hello, _ := appendFrame(nil, helloFrame{version: protocolVersion, token: cfg.token}) // validated
	tick := cfg.maxAge / 8
	if tick > maxTick {
		tick = maxTick
	}
	d := &driver{
		cfg:      cfg,
		sh:       sh,
		events:   make(chan event, eventQueue),
		wake:     make(chan struct{}, 1),
		commands: make(chan *directLease, 64),
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
		start:    time.Now(),
		rng:      rand.New(rand.NewSource(time.Now().UnixNano())),
		lastEnd:  make(map[uint16]uint64),
		tick:     tick,
		hello:    hello,
	}
	for _, t := range targets {
		d.addEndpoint(t)
	}
	return d
}

// now is the driver's monotonic clock.
func (d *driver) now() time.Duration { return time.Since(d.start) }

// poke wakes the driver without blocking.
func (d *driver) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// send delivers an event unless the client is closing.
func (d *driver) send(ev event) bool {
	select {
	case d.events <- ev:
		return true
	case <-d.done:
		return false
	}
}

// run is the driver goroutine; it returns after Close.
func (d *driver) run() {
	defer close(d.stopped)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	d.maintain()
	for {
		resetTimer(timer, d.nextDeadline()-d.now())
		select {
		case <-d.done:
			d.shutdown()
			return
		case ev := <-d.events:
			d.onEvent(ev)
		case l := <-d.commands:
			d.direct = append(d.direct, l)
		case <-d.wake:
		case <-timer.C:
		}
		d.drainQueues()
		d.maintain()
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	if d < 0 {
		d = 0
	}
	t.Reset(d)
}

// drainQueues applies what else is queued: up to eventBatch events, and every command.
func (d *driver) drainQueues() {
	for i := 0; i < eventBatch && d.tryEvent(); i++ {
	}
	for d.tryCommand() {
	}
}

func (d *driver) tryEvent() bool {
	select {
	case ev := <-d.events:
		d.onEvent(ev)
		return true
	default:
		return false
	}
}

func (d *driver) tryCommand() bool {
	select {
	case l := <-d.commands:
		d.direct = append(d.direct, l)
		return true
	default:
		return false
	}
}

// shutdown closes every connection, drops the buffer and fails waiting Lease callers.
func (d *driver) shutdown() {
	for _, s := range d.slots {
		if c := s.conn; c != nil {
			c.h.close()
			for _, o := range c.outstanding[c.head:] {
				if o.direct != nil {
					o.direct.deliver(leaseResult{err: ErrClosed})
				}
			}
		}
	}
	d.slots = nil
	for d.tryCommand() { // Lease calls whose command arrived as the client closed
	}
	for _, l := range d.direct {
		l.deliver(leaseResult{err: ErrClosed})
	}
	d.direct = nil
	d.sh.buf.mu.Lock()
	d.sh.buf.close()
	d.sh.buf.mu.Unlock()
}

// maintain is steps 2-4 of the file comment.
func (d *driver) maintain() {
	now := d.now()
	if now >= d.nextTick {
		d.timeOutSilent(now)
		d.nextTick = now + d.tick
	}
	d.markLagging(now)
	d.resolveAndConnect(now)
	d.sendDirect(now)
	d.refill(now)
	d.flush(now)
}

// nextDeadline is when the driver must look again without being woken: the housekeeping
// tick, a reconnect, a resolution, or the moment a connection would start lagging.
func (d *driver) nextDeadline() time.Duration {
	next := d.nextTick
	for _, s := range d.slots {
		if s.conn == nil {
			next = minDur(next, s.retryAt)
		} else if at, ok := d.lagDeadline(s.conn); ok && !s.conn.lagging {
			next = minDur(next, at)
		}
	}
	for _, ep := range d.endpoints {
		if !ep.t.ip && !ep.resolving {
			next = minDur(next, ep.nextResolve)
		}
	}
	return next
}

func minDur(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// lagLimit is how long a connection may leave its oldest request unanswered before it lags.
func (d *driver) lagLimit(c *liveConn) time.Duration {
	limit := LagFactor * c.usual
	if limit < LagFloor {
		limit = LagFloor
	}
	if limit > d.cfg.requestTimeout {
		limit = d.cfg.requestTimeout
	}
	return limit
}

// lagDeadline is when c starts lagging if nothing arrives; false if nothing is outstanding.
func (d *driver) lagDeadline(c *liveConn) (time.Duration, bool) {
	if c.head == len(c.outstanding) {
		return 0, false
	}
	since := c.outstanding[c.head].sent
	if c.lastReply > since {
		since = c.lastReply
	}
	return since + d.lagLimit(c), true
}

// markLagging updates every connection's lagging flag; a connection that starts lagging is
// trouble for its name (early re-resolution).
func (d *driver) markLagging(now time.Duration) {
	for _, s := range d.slots {
		c := s.conn
		if c == nil {
			continue
		}
		at, ok := d.lagDeadline(c)
		lag := ok && now >= at
		if lag && !c.lagging {
			d.cfg.logf("snowlease: %s has not answered for %v; asking other servers", s.addr, now-at+d.lagLimit(c))
			d.trouble(s.endpoint, now)
		}
		c.lagging = lag
	}
}

// anyPrompt reports whether some ready connection is answering (not lagging, not draining).
func (d *driver) anyPrompt() bool {
	for _, s := range d.slots {
		if c := s.conn; c != nil && c.ready && !c.lagging && !c.draining {
			return true
		}
	}
	return false
}

// timeOutSilent drops connections whose oldest request is past the request timeout.
func (d *driver) timeOutSilent(now time.Duration) {
	for i := len(d.slots) - 1; i >= 0; i-- {
		c := d.slots[i].conn
		if c == nil || c.head == len(c.outstanding) {
			continue
		}
		if now-c.outstanding[c.head].sent > d.cfg.requestTimeout {
			err := &ConnError{Addr: d.slots[i].addr, Op: "request timeout", Err: errTimeout(d.cfg.requestTimeout)}
			d.fail(i, err, now)
		}
	}
}

// pick returns the ready connection with the fewest requests outstanding and room for one
// more, skipping lagging ones while a prompt one exists; ties go to the one after the last
// pick, so idle servers share the load. -1 if none.
func (d *driver) pick(prompt bool) int {
	n := len(d.slots)
	best, bestLen := -1, 0
	for k := 0; k < n; k++ {
		i := (d.cursor + k) % n
		c := d.slots[i].conn
		if c == nil || !c.ready || c.draining || c.inFlight() >= d.cfg.maxInFlight || (prompt && c.lagging) {
			continue
		}
		if best < 0 || c.inFlight() < bestLen {
			best, bestLen = i, c.inFlight()
		}
	}
	if best >= 0 {
		d.cursor = best + 1
	}
	return best
}

// sendLease queues a LEASE for slot i (written by flush) and returns the count asked.
func (d *driver) sendLease(i int, count uint64, direct *directLease, now time.Duration) uint64 {
	c := d.slots[i].conn
	if count > uint64(c.maxLease) {
		count = uint64(c.maxLease)
	}
	if count < 1 {
		count = 1
	}
	id := c.nextReqID
	c.nextReqID++
	if c.nextReqID == 0 { // 0 is what connection-level ERRORs carry
		c.nextReqID = 1
	}
	c.wbuf, _ = appendFrame(c.wbuf, leaseFrame{requestID: id, count: uint32(count)})
	c.outstanding = append(c.outstanding, outstanding{requestID: id, count: uint32(count), sent: now, direct: direct})
	return count
}

// sendDirect sends queued Lease calls, oldest first, while a connection has room.
func (d *driver) sendDirect(now time.Duration) {
	prompt := d.anyPrompt()
	for len(d.direct) > 0 {
		l := d.direct[0]
		if l.state.Load() != 0 {
			d.direct = d.direct[1:]
			continue
		}
		i := d.pick(prompt)
		if i < 0 {
			return
		}
		d.direct = d.direct[1:]
		d.sendLease(i, uint64(l.count), l, now)
	}
}

// refill is step 4: expire, estimate, and lease up to the rate-sized target.
func (d *driver) refill(now time.Duration) {
	buf := d.sh.buf
	buf.mu.Lock()
	if cutoff := now - (d.cfg.maxAge - d.tick); cutoff > 0 {
		buf.expire(cutoff) // ranges this old pass max age before the next tick
	}
	avail, drawn := buf.avail, buf.drawn
	buf.mu.Unlock()
	rate := d.rate.observe(drawn-d.drawnSeen, now)
	d.drawnSeen = drawn
	p := plan(rate, d.cfg.lowWater, d.cfg.bufferCapacity)
	prompt := d.anyPrompt()
	inFlight := d.countedInFlight(prompt)
	if avail+inFlight < p.lowMark {
		for avail+inFlight < p.fillTo && avail+inFlight < d.cfg.bufferCapacity {
			i := d.pick(prompt)
			if i < 0 {
				break
			}
			inFlight += d.sendLease(i, d.cfg.bufferCapacity-avail-inFlight, nil, now)
		}
	}
	// Below the low mark with nothing more to send means replies are coming (they wake the
	// driver) or no server is up (reconnects and lag deadlines wake it): callers need not.
	var wakeBelow uint64
	if avail+inFlight >= p.lowMark {
		wakeBelow = p.lowMark - minU64(inFlight, p.lowMark)
	}
	buf.mu.Lock()
	buf.arm(wakeBelow)
	buf.mu.Unlock()
}

// countedInFlight is the IDs asked for the buffer that count as on the way: every
// connection's, except lagging ones' while a prompt connection exists (issue 16).
func (d *driver) countedInFlight(prompt bool) uint64 {
	var n uint64
	for _, s := range d.slots {
		c := s.conn
		if c == nil || (prompt && c.lagging) {
			continue
		}
		for _, o := range c.outstanding[c.head:] {
			if o.direct == nil {
				n += uint64(o.count)
			}
		}
	}
	return n
}

// flush writes each connection's queued requests with one write.
func (d *driver) flush(now time.Duration) {
	for i := len(d.slots) - 1; i >= 0; i-- {
		c := d.slots[i].conn
		if c == nil || len(c.wbuf) == 0 {
			continue
		}
		err := c.h.write(c.wbuf, d.cfg.requestTimeout)
		c.wbuf = c.wbuf[:0]
		if err != nil {
			d.fail(i, &ConnError{Addr: d.slots[i].addr, Op: "write", Err: err}, now)
		}
	}
}
