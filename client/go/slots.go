package snowlease

// Servers as the driver tracks them: each configured endpoint, each address it resolves to
// (a slot), and the connection on that address with its outstanding LEASEs.
//
// A slot is either live (a connection goroutine exists) or waiting out a jittered backoff.
// A waiting slot whose time has come first asks its endpoint for a fresh resolution (names
// only; a headless Service may have replaced the pod), then reconnects if its address is
// still listed. Addresses a resolution no longer lists are removed once their connection
// ends; new ones get slots that connect at once. A name is re-resolved every resolve
// interval, and, after one of its connections was lost or lagged, on the backoff schedule
// (initial, doubling, at most the backoff maximum) for troubleWindow.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// endpoint is one configured endpoint.
type endpoint struct {
	t           target
	resolving   bool
	resolved    bool          // a resolution has finished (successfully or not)
	resolvedAt  time.Duration // when the last one finished
	nextResolve time.Duration
	failures    int // resolution failures in a row: their backoff
	// inTrouble: a connection was lost or lagged within troubleWindow of troubleAt; the
	// name is re-resolved on the backoff schedule, step early.
	inTrouble bool
	troubleAt time.Duration
	early     int
}

// slot is one server address and its connection, if any.
type slot struct {
	addr     string
	endpoint int
	listed   bool // still in the endpoint's latest resolution
	failures int  // failures since the last WELCOME: the reconnect backoff
	lastErr  error
	retryAt  time.Duration // when a waiting slot reconnects
	conn     *liveConn     // nil while waiting
}

// liveConn is the driver's view of one connection.
type liveConn struct {
	id       uint64
	h        *connHandle
	ready    bool // WELCOME accepted
	worker   uint16
	maxLease uint32
	// draining: GOAWAY received; nothing more is sent, and the connection is dropped once
	// the outstanding replies are in.
	draining    bool
	drainReason uint16
	outstanding []outstanding // outstanding[head:] are unanswered, oldest first
	head        int
	nextReqID   uint32
	usual       time.Duration // decaying peak of the wait for each reply (noteReply)
	lastReply   time.Duration // when the last reply arrived
	lagging     bool
	wbuf        []byte // requests queued for the next flush
}

// outstanding is one unanswered LEASE; direct is the Lease call it serves, nil for the buffer.
type outstanding struct {
	requestID, count uint32
	sent             time.Duration
	direct           *directLease
}

func (c *liveConn) inFlight() int { return len(c.outstanding) - c.head }

// noteReply updates usual with the wait for a reply to a request sent at sent: the time
// since the request went out or the previous reply came, whichever is later. usual is a
// peak that decays by 1/16 per reply rather than a mean: with pipelining the first reply of
// a batch waits a whole round trip and the rest follow microseconds apart, and a mean of
// those would sink far below the round trip (15 quick replies leave 38 % of the peak).
func (c *liveConn) noteReply(now, sent time.Duration) {
	since := sent
	if c.lastReply > since {
		since = c.lastReply
	}
	c.usual -= c.usual / 16
	if wait := now - since; wait > c.usual {
		c.usual = wait
	}
	c.lastReply = now
}

// popOutstanding removes the oldest outstanding request.
func (c *liveConn) popOutstanding() outstanding {
	o := c.outstanding[c.head]
	c.outstanding[c.head] = outstanding{}
	c.head++
	if c.head == len(c.outstanding) {
		c.outstanding, c.head = c.outstanding[:0], 0
	}
	return o
}

func (d *driver) addEndpoint(t target) {
	index := len(d.endpoints)
	d.endpoints = append(d.endpoints, &endpoint{t: t})
	if t.ip {
		d.addSlot(t.addr(), index, 0)
	}
}

func (d *driver) addSlot(addr string, endpoint int, now time.Duration) {
	for _, s := range d.slots {
		if s.addr == addr {
			return
		}
	}
	d.slots = append(d.slots, &slot{addr: addr, endpoint: endpoint, listed: true, retryAt: now})
}

// resolveAndConnect starts due resolutions and due reconnects.
func (d *driver) resolveAndConnect(now time.Duration) {
	for i, ep := range d.endpoints {
		if ep.t.ip || ep.resolving {
			continue
		}
		if now >= ep.nextResolve || d.slotWantsFreshAddresses(i, now) {
			d.startResolve(i)
		}
	}
	for i, s := range d.slots {
		if s.conn != nil || s.retryAt > now {
			continue
		}
		ep := d.endpoints[s.endpoint]
		if ep.t.ip || (ep.resolved && ep.resolvedAt >= s.retryAt) {
			d.connect(i)
		}
	}
}

// slotWantsFreshAddresses: a slot of endpoint i is due to reconnect and the last resolution
// is older than its failure.
func (d *driver) slotWantsFreshAddresses(i int, now time.Duration) bool {
	ep := d.endpoints[i]
	for _, s := range d.slots {
		if s.endpoint == i && s.conn == nil && s.retryAt <= now && (!ep.resolved || ep.resolvedAt < s.retryAt) {
			return true
		}
	}
	return false
}

func (d *driver) startResolve(i int) {
	ep := d.endpoints[i]
	ep.resolving = true
	host, port, timeout, resolver := ep.t.host, ep.t.port, d.cfg.connectTimeout, d.cfg.resolver
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		go func() {
			select {
			case <-d.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		hosts, err := resolver.LookupHost(ctx, host)
		ev := event{kind: evResolved, endpoint: i}
		seen := make(map[string]bool)
		for _, h := range hosts {
			if a := net.JoinHostPort(h, port); !seen[a] {
				seen[a] = true
				ev.addrs = append(ev.addrs, a)
			}
		}
		switch {
		case err != nil:
			ev.err = &ConnError{Addr: host, Op: "resolve", Err: err}
		case len(ev.addrs) == 0:
			ev.err = &ConnError{Addr: host, Op: "resolve", Err: errors.New("no addresses")}
		}
		d.send(ev)
	}()
}

// onResolved applies a resolution: unlisted addresses leave (once their connection ends),
// new ones get slots. A failed resolution keeps the addresses already known: a DNS blip
// must not cut working servers off.
func (d *driver) onResolved(ev event, now time.Duration) {
	ep := d.endpoints[ev.endpoint]
	ep.resolving, ep.resolved, ep.resolvedAt = false, true, now
	if ev.err != nil {
		ep.nextResolve = now + backoff(d.rng, d.cfg.backoffInitial, d.cfg.backoffMax, ep.failures)
		ep.failures++
		d.cfg.logf("snowlease: %v", ev.err)
		d.setLastErr(ev.err)
		d.updateFatal()
		return
	}
	ep.failures = 0
	d.scheduleResolve(ep, now)
	listed := make(map[string]bool, len(ev.addrs))
	for _, a := range ev.addrs {
		listed[a] = true
	}
	kept := d.slots[:0]
	for _, s := range d.slots {
		if s.endpoint == ev.endpoint {
			s.listed = listed[s.addr]
		}
		if s.listed || s.endpoint != ev.endpoint || s.conn != nil {
			kept = append(kept, s)
		}
	}
	d.slots = kept
	for _, a := range ev.addrs {
		d.addSlot(a, ev.endpoint, now)
	}
}

// scheduleResolve sets the next resolution after a successful one: the backoff schedule
// while the name is in trouble, the resolve interval otherwise.
func (d *driver) scheduleResolve(ep *endpoint, now time.Duration) {
	if ep.inTrouble && now-ep.troubleAt < troubleWindow {
		ep.nextResolve = now + backoff(d.rng, d.cfg.backoffInitial, d.cfg.backoffMax, ep.early)
		ep.early++
		return
	}
	ep.inTrouble, ep.early = false, 0
	ep.nextResolve = now + d.cfg.resolveInterval
}

// trouble marks a lost or lagging connection of endpoint i: its name is resolved again
// now, and then on the backoff schedule for troubleWindow.
func (d *driver) trouble(i int, now time.Duration) {
	ep := d.endpoints[i]
	ep.troubleAt = now
	if ep.t.ip || ep.inTrouble {
		return
	}
	ep.inTrouble, ep.early = true, 0
	if !ep.resolving {
		ep.nextResolve = now
	}
}

// connect starts a connection goroutine for slot i.
func (d *driver) connect(i int) {
	s := d.slots[i]
	d.nextConnID++
	ep := d.endpoints[s.endpoint]
	h := newConnHandle()
	s.conn = &liveConn{id: d.nextConnID, h: h, nextReqID: 1}
	go d.serveConn(d.nextConnID, s.addr, d.cfg.tlsFor(ep.t.host), h)
}

// fail drops slot i's connection, hands its unanswered Lease calls to other servers, and
// schedules a reconnect after a jittered backoff. Unanswered buffer requests need nothing:
// they stop counting as on the way, and the next refill asks elsewhere.
func (d *driver) fail(i int, why error, now time.Duration) {
	s := d.slots[i]
	c := s.conn
	if c == nil {
		return
	}
	c.h.close()
	var requeue []*directLease
	for _, o := range c.outstanding[c.head:] {
		if o.direct != nil {
			requeue = append(requeue, o.direct)
		}
	}
	d.direct = append(requeue, d.direct...)
	delay := backoff(d.rng, d.cfg.backoffInitial, d.cfg.backoffMax, s.failures)
	s.failures++
	s.conn, s.retryAt, s.lastErr = nil, now+delay, why
	switch {
	case c.ready:
		d.cfg.logf("snowlease: connection to %s lost (%v); reconnecting in %v", s.addr, why, delay)
	case s.failures == 1:
		d.cfg.logf("snowlease: cannot connect to %s (%v); retrying in %v", s.addr, why, delay)
	}
	d.setLastErr(why)
	d.trouble(s.endpoint, now)
	if !s.listed {
		d.slots = append(d.slots[:i], d.slots[i+1:]...)
	}
	d.updateFatal()
}

func (d *driver) setLastErr(err error) {
	d.sh.mu.Lock()
	d.sh.lastErr = err
	d.sh.mu.Unlock()
}

// updateFatal publishes a fatal error while no server is usable and every one of them
// refused this client for a reason retrying cannot fix, so Dial fails fast on a wrong token
// or a server that is not snowlease.
func (d *driver) updateFatal() {
	var fatal error
	allResolved := true
	for _, ep := range d.endpoints {
		allResolved = allResolved && (ep.t.ip || ep.resolved)
	}
	if allResolved && len(d.slots) > 0 {
		fatal = d.slots[0].lastErr
		for _, s := range d.slots {
			if (s.conn != nil && s.conn.ready) || s.lastErr == nil || IsRetryable(s.lastErr) {
				fatal = nil
				break
			}
		}
	}
	d.sh.mu.Lock()
	changed := d.sh.fatal != fatal
	d.sh.fatal = fatal
	d.sh.mu.Unlock()
	if changed {
		d.sh.buf.mu.Lock()
		d.sh.buf.notify()
		d.sh.buf.mu.Unlock()
	}
}

// errTimeout is a timeout cause with its limit.
func errTimeout(limit time.Duration) error {
	return fmt.Errorf("no answer within %v", limit)
}
