package snowlease

// One goroutine per server connection: socket I/O only, no decisions.
//
// The goroutine connects (and, with TLS, completes the handshake), sends HELLO and reads the
// first reply, all within the connect timeout, then reports that first frame and every later
// one to the driver, in order. When the socket fails, the server closes it, or the bytes
// stop being protocol, it reports why as its last event and ends. The driver writes requests
// itself through the connHandle (a LEASE batch is one short write that never fills a socket
// buffer: at most max-in-flight x 13 bytes are unanswered), and ends a connection by
// closing the handle, which closes the socket and unblocks the reader.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// readBuffer: 4 KiB, 240 LEASED replies; the reader takes whatever the server flushed in
// one read instead of one syscall per 21-byte frame.
const readBuffer = 4096

// connHandle is how the driver writes to and closes a connection its goroutine opened.
type connHandle struct {
	mu     sync.Mutex
	raw    net.Conn // the TCP connection, closed to end everything
	w      net.Conn // what requests are written to: raw, or the TLS session over it
	closed bool
	cancel context.CancelFunc // ends a dial or handshake in progress
	ctx    context.Context
}

func newConnHandle() *connHandle {
	ctx, cancel := context.WithCancel(context.Background())
	return &connHandle{ctx: ctx, cancel: cancel}
}

// attach records the TCP connection; false (and the connection closed) if the driver
// already dropped this one.
func (h *connHandle) attach(raw net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		raw.Close()
		return false
	}
	h.raw, h.w = raw, raw
	return true
}

func (h *connHandle) setWriter(w net.Conn) {
	h.mu.Lock()
	h.w = w
	h.mu.Unlock()
}

// close ends the connection; safe to call more than once and from any goroutine.
func (h *connHandle) close() {
	h.mu.Lock()
	h.closed = true
	raw := h.raw
	h.mu.Unlock()
	h.cancel()
	if raw != nil {
		raw.Close() // no TLS close_notify: it is a write that could wait on a dead peer
	}
}

// write sends b within limit. Only the driver writes, so writes never interleave.
func (h *connHandle) write(b []byte, limit time.Duration) error {
	h.mu.Lock()
	w := h.w
	h.mu.Unlock()
	if w == nil {
		return errors.New("not connected")
	}
	if err := w.SetWriteDeadline(time.Now().Add(limit)); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// serveConn is the connection goroutine; its last event is always evClosed.
func (d *driver) serveConn(id uint64, addr string, tlsCfg *tls.Config, h *connHandle) {
	err := d.runConn(id, addr, tlsCfg, h)
	d.send(event{kind: evClosed, conn: id, err: err})
}

func (d *driver) runConn(id uint64, addr string, tlsCfg *tls.Config, h *connHandle) error {
	deadline := time.Now().Add(d.cfg.connectTimeout)
	ctx, cancel := context.WithDeadline(h.ctx, deadline)
	defer cancel()
	var dialer net.Dialer
	raw, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = errTimeout(d.cfg.connectTimeout)
		}
		return &ConnError{Addr: addr, Op: "connect", Err: err}
	}
	if !h.attach(raw) {
		return ErrClosed
	}
	conn := raw
	if tlsCfg != nil {
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return handshakeError(ctx, addr, err)
		}
		h.setWriter(tc)
		conn = tc
	}
	r := bufio.NewReaderSize(conn, readBuffer)
	first, rtt, err := greet(conn, r, d.hello, deadline)
	if err != nil {
		return connFailure(addr, err, d.cfg.connectTimeout)
	}
	if !d.send(event{kind: evConnected, conn: id, frame: first, rtt: rtt}) {
		return ErrClosed
	}
	var buf [lenPrefix + maxFrameLen]byte
	for {
		f, err := readFrame(r, &buf)
		if err != nil {
			return connFailure(addr, err, 0)
		}
		if !d.send(event{kind: evFrame, conn: id, frame: f}) {
			return ErrClosed
		}
	}
}

// greet sends HELLO and reads the first reply before deadline.
func greet(conn net.Conn, r *bufio.Reader, hello []byte, deadline time.Time) (frame, time.Duration, error) {
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, 0, err
	}
	start := time.Now()
	if _, err := conn.Write(hello); err != nil {
		return nil, 0, err
	}
	var buf [lenPrefix + maxFrameLen]byte
	first, err := readFrame(r, &buf)
	if err != nil {
		return nil, 0, err
	}
	return first, time.Since(start), conn.SetDeadline(time.Time{})
}

// readFrame reads one server frame, checking the length prefix before reading the body.
func readFrame(r *bufio.Reader, buf *[lenPrefix + maxFrameLen]byte) (frame, error) {
	if _, err := io.ReadFull(r, buf[:lenPrefix]); err != nil {
		return nil, err
	}
	if _, err := frameLen(buf[:lenPrefix]); err != nil {
		if buf[0] >= 0x14 && buf[0] <= 0x17 && buf[1] == 3 {
			// A TLS record header (alert, handshake, ...): a plaintext client at a TLS port.
			return nil, wireErrorf("%v; the bytes are a TLS record: the server speaks TLS (use WithTLS or WithTLSCAFile)", err)
		}
		return nil, err // 0 or above 1024: nothing more is read
	}
	total := lenPrefix + int(binary.BigEndian.Uint32(buf[:]))
	if _, err := io.ReadFull(r, buf[lenPrefix:total]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	f, _, err := decodeResponse(buf[:total])
	return f, err
}

// connFailure turns an I/O or decoding error into the client's error type; limit is the
// deadline that applied, 0 if none.
func connFailure(addr string, err error, limit time.Duration) error {
	var we *wireError
	var ne net.Error
	switch {
	case errors.As(err, &we):
		return &ProtocolError{Addr: addr, Reason: we.msg}
	case errors.Is(err, io.EOF):
		return &ConnError{Addr: addr, Op: "closed", Err: errors.New("the server closed the connection")}
	case limit > 0 && errors.As(err, &ne) && ne.Timeout():
		return &ConnError{Addr: addr, Op: "connect", Err: errTimeout(limit)}
	case isTLSAlert(err):
		// With TLS 1.3 a refused client certificate shows up after the handshake.
		return &ConnError{Addr: addr, Op: "tls", Err: err}
	}
	return &ConnError{Addr: addr, Op: "read", Err: err}
}

// handshakeError sorts a TLS handshake failure: socket errors (and timeouts) stay
// retryable; anything the TLS layer itself reports (an untrusted or misnamed certificate, a
// refused client certificate, a peer that does not speak TLS) becomes Op "tls", which
// waiting cannot fix.
func handshakeError(ctx context.Context, addr string, err error) error {
	var op *net.OpError
	switch {
	case ctx.Err() != nil:
		return &ConnError{Addr: addr, Op: "connect", Err: err}
	case isTLSAlert(err):
		return &ConnError{Addr: addr, Op: "tls", Err: err}
	case errors.As(err, &op), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &ConnError{Addr: addr, Op: "connect", Err: err}
	}
	return &ConnError{Addr: addr, Op: "tls", Err: err}
}

// isTLSAlert: the peer sent a TLS alert (crypto/tls reports it as a *net.OpError with Op
// "remote error").
func isTLSAlert(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error"
}
