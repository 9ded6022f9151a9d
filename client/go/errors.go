package snowlease

// The client's errors. Connection goroutines and the driver create them from socket errors,
// bad frames and ERROR replies; the driver keeps the most recent one so a caller who times
// out learns why (UnavailableError.Cause), and IsRetryable tells that caller whether waiting
// can help. Every error works with errors.Is and errors.As:
//
//	errors.Is(err, snowlease.ErrUnavailable)   no IDs within the timeout (retryable)
//	errors.Is(err, snowlease.ErrClosed)        the client was closed
//	errors.Is(err, snowlease.ErrConfig)        a setting or endpoint is unusable
//	errors.Is(err, snowlease.ErrProtocol)      a server broke the protocol; its IDs were not used
//	errors.As(err, &serverErr)                 *ServerError: the server's ERROR code and message
//	errors.As(err, &connErr)                   *ConnError: the network or TLS, with its cause

import (
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrClosed: the client was closed; every later call fails with it.
	ErrClosed = errors.New("snowlease: the client is closed")
	// ErrUnavailable: no IDs arrived within the client's timeout. Returned as an
	// *UnavailableError whose Cause is the last problem the client saw.
	ErrUnavailable = errors.New("snowlease: no IDs available")
	// ErrConfig: a setting or an endpoint is unusable; fix the configuration.
	ErrConfig = errors.New("snowlease: invalid configuration")
	// ErrInvalidArgument: a method was called with an argument it cannot serve.
	ErrInvalidArgument = errors.New("snowlease: invalid argument")
	// ErrProtocol: a server broke the protocol contract (a bad frame, a wrong count, a range
	// out of order). Returned as a *ProtocolError; the IDs of that reply were not handed out.
	ErrProtocol = errors.New("snowlease: protocol violation")
)

// ServerError is an ERROR frame a server sent. Code says what went wrong; Message is the
// server's explanation for humans (do not parse it).
type ServerError struct {
	Addr    string    // the server's address
	Code    ErrorCode // the wire code
	Message string    // the server's text
}

// Error names the server, the code and the server's message.
func (e *ServerError) Error() string {
	return fmt.Sprintf("snowlease: %s answered ERROR %s: %s", e.Addr, e.Code, e.Message)
}

// Retryable reports whether the same request may succeed later or elsewhere.
func (e *ServerError) Retryable() bool { return e.Code.Retryable() }

// ProtocolError is a reply that broke the protocol. errors.Is(err, ErrProtocol) holds.
type ProtocolError struct {
	Addr   string // the server's address
	Reason string // what was wrong
}

// Error names the server and what it got wrong.
func (e *ProtocolError) Error() string {
	return fmt.Sprintf("snowlease: protocol violation by %s: %s", e.Addr, e.Reason)
}

// Is makes errors.Is(err, ErrProtocol) true.
func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }

// ConnError is a failure of one connection: Op is what failed ("resolve", "connect", "tls",
// "read", "write", "request timeout", "closed", "goaway"), Err the cause.
type ConnError struct {
	Addr string // the server's address or the endpoint being resolved
	Op   string // what failed
	Err  error  // why
}

// Error names the operation, the address and the cause.
func (e *ConnError) Error() string {
	return fmt.Sprintf("snowlease: %s %s: %v", e.Op, e.Addr, e.Err)
}

// Unwrap returns the cause.
func (e *ConnError) Unwrap() error { return e.Err }

// UnavailableError: no IDs within the timeout. errors.Is(err, ErrUnavailable) holds, and
// Cause (also reached by errors.As through Unwrap) is the most recent failure, if any.
type UnavailableError struct {
	Waited time.Duration // how long the caller waited
	Cause  error         // the last problem the client saw; nil if none yet
}

// Error says how long the caller waited and the last problem.
func (e *UnavailableError) Error() string {
	cause := "no server answered yet"
	if e.Cause != nil {
		cause = e.Cause.Error()
	}
	return fmt.Sprintf("snowlease: no IDs within %v; last problem: %s", e.Waited, cause)
}

// Is makes errors.Is(err, ErrUnavailable) true.
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// Unwrap returns the cause.
func (e *UnavailableError) Unwrap() error { return e.Cause }

// IsRetryable reports whether the same call may succeed later without changing anything:
// the failure was about a server or the network, not about the configuration, the argument,
// a TLS certificate, a protocol violation or the client having been closed.
func IsRetryable(err error) bool {
	var se *ServerError
	var ue *UnavailableError
	var ce *ConnError
	switch {
	case err == nil:
		return false
	case errors.As(err, &ue):
		return true
	case errors.Is(err, ErrClosed), errors.Is(err, ErrConfig), errors.Is(err, ErrInvalidArgument),
		errors.Is(err, ErrProtocol):
		return false
	case errors.As(err, &se):
		return se.Retryable()
	case errors.As(err, &ce):
		return ce.Op != "tls" && !isCertificateError(ce.Err)
	}
	return true
}

// isCertificateError: the peer's certificate is untrusted, expired or for another name;
// it fails the same way until a certificate or a setting changes.
func isCertificateError(err error) bool {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}

func configError(format string, args ...interface{}) error {
	return wrapf(ErrConfig, format, args...)
}

// wrapf is sentinel with a message; errors.Is(err, sentinel) holds.
func wrapf(sentinel error, format string, args ...interface{}) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
