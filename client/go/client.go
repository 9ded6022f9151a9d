package snowlease

import (
	"context"
	"sync"
	"time"
)

// Client hands out IDs from a local buffer of leased ranges that a background goroutine
// keeps ahead of demand. It is safe for use by any number of goroutines. Close it when done:
// its goroutines and connections live until then.
type Client struct {
	sh        *shared
	d         *driver
	timeout   time.Duration
	closeOnce sync.Once
}

// Block is Count consecutive IDs starting at First, all from one server and one millisecond.
type Block struct {
	First int64  // the first ID
	Count uint32 // how many IDs; at least 1
}

// End is one past the last ID.
func (b Block) End() int64 { return b.First + int64(b.Count) }

// IDs lists the block's IDs.
func (b Block) IDs() []int64 {
	ids := make([]int64, b.Count)
	for i := range ids {
		ids[i] = b.First + int64(i)
	}
	return ids
}

// Dial starts a client for the servers at addrs and returns once one of them has greeted it
// (WELCOME), so the layout is known. Each address is host:port, ip:port, [ipv6]:port or a
// bare host or IP (port 7609); a name is resolved to every address behind it (a Kubernetes
// headless Service gives every pod) and the client connects to all of them.
//
// Dial fails at once on a bad option or endpoint (ErrConfig), with the server's reason if
// every server refuses this client for good (a *ServerError such as UNAUTHORIZED, a TLS
// certificate error), with ErrUnavailable if none answers within the timeout (WithTimeout,
// default 5 s), and with ctx's error if ctx ends first.
func Dial(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	targets, err := cfg.validate(addrs)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sh := &shared{buf: newIDBuffer()}
	c := &Client{sh: sh, d: newDriver(&cfg, targets, sh), timeout: cfg.timeout}
	go c.d.run()
	if err := c.waitReady(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) waitReady(ctx context.Context) error {
	start := time.Now()
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	for {
		buf := c.sh.buf
		buf.mu.Lock()
		ready, closed, ch := c.sh.layout.Load() != nil, buf.closed, buf.waitChan()
		buf.mu.Unlock()
		_, fatal := c.sh.problems()
		switch {
		case ready:
			return nil
		case fatal != nil:
			return fatal
		case closed:
			return ErrClosed
		}
		if err := c.sleep(ctx, ch, timer, start); err != nil {
			return err
		}
	}
}

// NextID returns one unique ID. Served from the buffer it is a memory operation (a short
// mutex and a pop; ctx is not consulted); only when the buffer is empty does it wait for a
// refill, until ctx ends (its error is returned) or no IDs arrive for the client's timeout
// (an *UnavailableError, errors.Is(err, ErrUnavailable)). After Close it returns ErrClosed.
//
// IDs from one server increase from call to call of one goroutine; IDs of different servers
// sort by time only roughly (to within their clocks and max age).
func (c *Client) NextID(ctx context.Context) (int64, error) {
	buf := c.sh.buf
	buf.mu.Lock()
	id, ok, wake := buf.pop()
	buf.mu.Unlock()
	if wake {
		c.d.poke()
	}
	if ok {
		return int64(id), nil
	}
	return c.waitNext(ctx)
}

func (c *Client) waitNext(ctx context.Context) (int64, error) {
	var id uint64
	err := c.wait(ctx, func(b *idBuffer) bool {
		var ok bool
		id, ok, _ = b.pop()
		return ok
	})
	return int64(id), err
}

// Lease returns up to n consecutive IDs: from the buffer if one leased range still holds
// min(n, max lease), otherwise straight from a server, which may return fewer (up to the end
// of its current millisecond). n above the servers' max lease (4,096 by default) is reduced
// to it; n below 1 is ErrInvalidArgument. Waiting ends as NextID's does. A block straight
// from a server is newer than ranges still buffered, so blocks (and NextID's IDs) need not
// come in increasing order across calls; they are always unique.
func (c *Client) Lease(ctx context.Context, n int) (Block, error) {
	if n < 1 {
		return Block{}, wrapf(ErrInvalidArgument, "lease count must be at least 1, got %d", n)
	}
	count := uint64(c.Layout().MaxLease())
	if uint64(n) < count {
		count = uint64(n)
	}
	buf := c.sh.buf
	buf.mu.Lock()
	first, ok := buf.takeRange(count)
	wake := buf.wantsRefill()
	closed := buf.closed
	buf.mu.Unlock()
	if wake {
		c.d.poke()
	}
	switch {
	case ok:
		return Block{First: int64(first), Count: uint32(count)}, nil
	case closed:
		return Block{}, ErrClosed
	}
	return c.leaseDirect(ctx, uint32(count))
}

func (c *Client) leaseDirect(ctx context.Context, count uint32) (Block, error) {
	l := &directLease{count: count, reply: make(chan leaseResult, 1)}
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	select {
	case c.d.commands <- l:
	case <-c.d.stopped:
		return Block{}, ErrClosed
	case <-ctx.Done():
		return Block{}, ctx.Err()
	}
	var gaveUp error
	select {
	case r := <-l.reply:
		return r.block()
	case <-ctx.Done():
		gaveUp = ctx.Err()
	case <-timer.C:
		gaveUp = c.unavailable(c.timeout)
	case <-c.d.stopped: // closed while the command was on its way
		gaveUp = ErrClosed
	}
	if l.state.CompareAndSwap(0, 2) {
		return Block{}, gaveUp // a reply arriving later goes to the buffer
	}
	return (<-l.reply).block() // answered meanwhile: the IDs are the caller's
}

func (r leaseResult) block() (Block, error) {
	if r.err != nil {
		return Block{}, r.err
	}
	return Block{First: int64(r.first), Count: r.count}, nil
}

// Layout is the ID layout the servers announced (every server behind one client must
// announce the same).
func (c *Client) Layout() Layout {
	if l := c.sh.layout.Load(); l != nil {
		return *l
	}
	return DefaultLayout
}

// Decode takes an ID apart with the servers' layout: its time, worker and sequence.
func (c *Client) Decode(id int64) Parts { return c.Layout().Decode(id) }

// Close closes every connection and drops the buffered IDs; afterwards every call fails with
// ErrClosed. It returns once the background goroutine has stopped, and always returns nil.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.d.done)
		<-c.d.stopped
	})
	return nil
}

// wait runs attempt on the buffer until it succeeds, poking the driver and waiting for
// refills in between. It ends with an *UnavailableError once the timeout passes without any
// IDs arriving (IDs that others took count as arriving: servers are reachable).
func (c *Client) wait(ctx context.Context, attempt func(*idBuffer) bool) error {
	start := time.Now()
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	buf := c.sh.buf
	var pushed uint64
	for first := true; ; first = false {
		buf.mu.Lock()
		if attempt(buf) {
			buf.mu.Unlock()
			return nil
		}
		closed, progress := buf.closed, !first && buf.pushed != pushed
		pushed = buf.pushed
		ch := buf.waitChan()
		buf.mu.Unlock()
		if closed {
			return ErrClosed
		}
		if progress {
			resetTimer(timer, c.timeout)
		}
		c.d.poke()
		if err := c.sleep(ctx, ch, timer, start); err != nil {
			return err
		}
	}
}

// sleep blocks a waiting caller until the buffer changes (ch closes: nil), ctx ends (its
// error) or timer fires (an *UnavailableError for the time since start).
func (c *Client) sleep(ctx context.Context, ch <-chan struct{}, timer *time.Timer, start time.Time) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return c.unavailable(time.Since(start))
	}
}

func (c *Client) unavailable(waited time.Duration) error {
	last, fatal := c.sh.problems()
	if fatal != nil {
		last = fatal
	}
	return &UnavailableError{Waited: waited, Cause: last}
}
