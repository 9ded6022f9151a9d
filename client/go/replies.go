package snowlease

// Applying what resolvers and servers send: a WELCOME makes a connection ready (once its
// layout and worker id check out), a LEASED reply is verified against the oldest
// outstanding request and its range goes to the buffer or to a Lease caller, a GOAWAY lets
// the outstanding replies finish, and an ERROR or anything unexpected ends the connection.
// Every error returned here makes the driver drop the connection without using anything
// from the offending frame.

import (
	"errors"
	"fmt"
)

// onEvent applies one event from a resolver or connection goroutine.
func (d *driver) onEvent(ev event) {
	now := d.now()
	if ev.kind == evResolved {
		d.onResolved(ev, now)
		return
	}
	i := d.slotOf(ev.conn)
	if i < 0 {
		return // from a connection the driver already dropped
	}
	var err error
	switch ev.kind {
	case evConnected:
		err = d.onConnected(i, ev)
	case evFrame:
		err = d.onFrame(i, ev.frame)
	case evClosed:
		err = ev.err
		if c := d.slots[i].conn; c.draining {
			// After GOAWAY the end of the stream is expected; name the GOAWAY, not the EOF.
			err = goAwayError(d.slots[i].addr, c.drainReason)
		}
	}
	if err != nil {
		d.fail(i, err, now)
	}
}

func (d *driver) slotOf(conn uint64) int {
	for i, s := range d.slots {
		if s.conn != nil && s.conn.id == conn {
			return i
		}
	}
	return -1
}

// onConnected applies the first frame a server sent after HELLO, which must be WELCOME.
func (d *driver) onConnected(i int, ev event) error {
	s := d.slots[i]
	w, ok := ev.frame.(welcomeFrame)
	if !ok {
		if e, isErr := ev.frame.(errorFrame); isErr {
			return &ServerError{Addr: s.addr, Code: e.code, Message: e.message}
		}
		if g, isGoAway := ev.frame.(goAwayFrame); isGoAway {
			return goAwayError(s.addr, g.reason)
		}
		return &ProtocolError{Addr: s.addr, Reason: fmt.Sprintf("%s in reply to HELLO", opcodeNames[ev.frame.opcode()])}
	}
	layout, err := checkWelcome(w, d.sh.layout.Load())
	if err != nil {
		return &ProtocolError{Addr: s.addr, Reason: err.Error()}
	}
	for _, other := range d.slots {
		if c := other.conn; c != nil && c.ready && c.worker == w.workerID {
			return &ProtocolError{Addr: s.addr, Reason: fmt.Sprintf(
				"worker %d is already connected at %s; two addresses reach the same server, or two servers share a worker id",
				w.workerID, other.addr)}
		}
	}
	c := s.conn
	c.ready, c.worker, c.maxLease, c.usual = true, w.workerID, w.maxLease, ev.rtt
	s.failures, s.lastErr = 0, nil
	d.sh.layout.CompareAndSwap(nil, &layout)
	d.cfg.logf("snowlease: connected to %s, worker %d, layout %s", s.addr, w.workerID, layout)
	d.updateFatal()
	d.sh.buf.mu.Lock()
	d.sh.buf.notify()
	d.sh.buf.mu.Unlock()
	return nil
}

// onFrame applies a frame after the WELCOME.
func (d *driver) onFrame(i int, f frame) error {
	s := d.slots[i]
	c := s.conn
	switch f := f.(type) {
	case leasedFrame:
		if err := d.onLeased(c, f); err != nil {
			return &ProtocolError{Addr: s.addr, Reason: err.Error()}
		}
		if c.draining && c.inFlight() == 0 {
			return goAwayError(s.addr, c.drainReason)
		}
		return nil
	case goAwayFrame:
		c.draining, c.drainReason = true, f.reason
		if c.inFlight() == 0 {
			return goAwayError(s.addr, f.reason)
		}
		return nil
	case errorFrame:
		return &ServerError{Addr: s.addr, Code: f.code, Message: f.message}
	case welcomeFrame:
		return &ProtocolError{Addr: s.addr, Reason: "second WELCOME on one connection"}
	}
	// PONG (this client sends no PING) and BULK_LEASED (version 2 only) answer nothing sent.
	return &ProtocolError{Addr: s.addr, Reason: fmt.Sprintf("%s answers nothing this version-1 client sent", opcodeNames[f.opcode()])}
}

// onLeased verifies a LEASED reply and hands its range out.
func (d *driver) onLeased(c *liveConn, f leasedFrame) error {
	layout := d.sh.layout.Load()
	if layout == nil {
		return errors.New("LEASED before any WELCOME")
	}
	var a *asked
	if c.inFlight() > 0 {
		o := c.outstanding[c.head]
		a = &asked{requestID: o.requestID, count: o.count}
	}
	prev, hasPrev := d.lastEnd[c.worker]
	end, err := checkLeased(*layout, c.worker, a, prev, hasPrev, f)
	if err != nil {
		return err
	}
	now := d.now()
	o := c.popOutstanding()
	c.noteReply(now, o.sent)
	d.lastEnd[c.worker] = end
	if o.direct != nil && o.direct.deliver(leaseResult{first: f.firstID, count: f.count}) {
		return nil
	}
	// If the Lease caller gave up, the IDs are still good: buffer them. Their age counts
	// from the request, not the reply: the server issued them no earlier than it was asked,
	// so a reply that arrives late (a stalled server) is not taken for a fresh one.
	d.sh.buf.mu.Lock()
	d.sh.buf.push(span{next: f.firstID, end: end, asked: o.sent})
	d.sh.buf.mu.Unlock()
	return nil
}

func goAwayError(addr string, reason uint16) error {
	return &ConnError{Addr: addr, Op: "goaway", Err: fmt.Errorf("server sent GOAWAY %s", goAwayName(reason))}
}
