package snowlease

// The wire format of protocol.md, versions 1 and 2: a pure codec over byte slices, no
// sockets, no clocks, no goroutines.
//
// Bytes flow in through decodeRequest / decodeResponse, which read the 4-byte length prefix,
// check it against maxFrameLen before looking any further, check the body size the opcode
// requires (and the inner lengths of HELLO, ERROR and BULK_LEASED) before reading a field,
// and return the frame and the bytes it used: (nil, 0, nil) while the frame is incomplete,
// an error when the stream is corrupt (the caller closes the connection). Frames flow out
// through appendFrame, which appends to a slice so many requests share one write, and refuses
// values the format cannot carry instead of cutting them.
//
// The client speaks version 1 on the wire (HELLO version 1, which every server version
// serves); the version-2 frames (WELCOME with the worker set, BULK_LEASE, BULK_LEASED) are
// here so the codec covers the whole specification and its tests pin every byte.

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

const (
	// protocolVersion is the version this client sends in HELLO and speaks.
	protocolVersion uint16 = 1
	// protocolVersion2 adds BULK_LEASE / BULK_LEASED and the worker set in WELCOME.
	protocolVersion2 uint16 = 2
	// lenPrefix is the size of the length prefix.
	lenPrefix = 4
	// maxFrameLen is the largest value of the length prefix (opcode + body), both directions.
	maxFrameLen = 1024
	// maxErrorMessage is what is left of a maximal frame after the ERROR header fields.
	maxErrorMessage = maxFrameLen - 1 - 4 - 2 - 2
	// maxTokenLen is the longest HELLO token: its length travels in one byte.
	maxTokenLen = 255
	// runBytes is the size of one BULK_LEASED run: first_id (u64) and count (u32).
	runBytes = 12
	// maxRuns is the most runs one BULK_LEASED carries within maxFrameLen.
	maxRuns = (maxFrameLen - 1 - 4 - 2) / runBytes
	// maxBulk is the largest count a BULK_LEASE may ask for (2^22).
	maxBulk = 1 << 22
	// welcomeV1Body and welcomeV2Body are the WELCOME body sizes of each version.
	welcomeV1Body = 27
	welcomeV2Body = 35
)

// Opcodes. Requests are 0x01..0x7F; a reply is its request's opcode with the top bit set.
const (
	opHello      byte = 0x01
	opLease      byte = 0x02
	opPing       byte = 0x03
	opBulkLease  byte = 0x04
	opWelcome    byte = 0x81
	opLeased     byte = 0x82
	opPong       byte = 0x83
	opBulkLeased byte = 0x84
	opGoAway     byte = 0x8E
	opError      byte = 0x8F
)

// opcodeNames names every opcode as protocol.md's opcode table does.
var opcodeNames = map[byte]string{
	opHello: "HELLO", opLease: "LEASE", opPing: "PING", opBulkLease: "BULK_LEASE",
	opWelcome: "WELCOME", opLeased: "LEASED", opPong: "PONG", opBulkLeased: "BULK_LEASED",
	opGoAway: "GOAWAY", opError: "ERROR",
}

// GOAWAY reasons (protocol.md section 7). An unknown reason means SHUTDOWN.
const (
	goAwayShutdown     uint16 = 0
	goAwayIdleTimeout  uint16 = 1
	goAwayWriteTimeout uint16 = 2
)

// goAwayName names a GOAWAY reason as protocol.md does.
func goAwayName(reason uint16) string {
	switch reason {
	case goAwayShutdown:
		return "SHUTDOWN"
	case goAwayIdleTimeout:
		return "IDLE_TIMEOUT"
	case goAwayWriteTimeout:
		return "WRITE_TIMEOUT"
	}
	return "UNKNOWN"
}

// ErrorCode is the code of a server's ERROR frame (protocol.md section 6). Codes a newer
// server adds still arrive as an ErrorCode; they count as closing and not retryable.
type ErrorCode uint16

// The error codes of protocol version 1.
const (
	CodeMalformed          ErrorCode = 1 // the byte stream is not valid protocol
	CodeUnsupportedVersion ErrorCode = 2 // HELLO asked for a version the server cannot speak
	CodeInvalidCount       ErrorCode = 3 // LEASE count outside 1..max_lease
	CodeUnauthorized       ErrorCode = 4 // a token is required and was missing or wrong
	CodeUnavailable        ErrorCode = 5 // the server cannot issue IDs right now
	CodeOverloaded         ErrorCode = 6 // the server is at its connection limit
	CodeInternal           ErrorCode = 7 // a bug on the server side
)

// errorCodeInfo is protocol.md's error table in one place: name, closes, retryable, text.
var errorCodeInfo = map[ErrorCode]struct {
	name              string
	closes, retryable bool
	description       string
}{
	CodeMalformed:          {"MALFORMED", true, false, "frame is malformed"},
	CodeUnsupportedVersion: {"UNSUPPORTED_VERSION", true, false, "protocol version not supported"},
	CodeInvalidCount:       {"INVALID_COUNT", false, false, "lease count must be between 1 and max_lease"},
	CodeUnauthorized:       {"UNAUTHORIZED", true, false, "a valid token is required"},
	CodeUnavailable:        {"UNAVAILABLE", false, true, "server cannot issue IDs right now"},
	CodeOverloaded:         {"OVERLOADED", true, true, "server is at its connection limit"},
	CodeInternal:           {"INTERNAL", true, true, "internal server error"},
}

// allErrorCodes lists every code of version 1 in table order.
var allErrorCodes = []ErrorCode{
	CodeMalformed, CodeUnsupportedVersion, CodeInvalidCount, CodeUnauthorized,
	CodeUnavailable, CodeOverloaded, CodeInternal,
}

// Name is the code's name as protocol.md writes it, or "UNKNOWN".
func (c ErrorCode) Name() string {
	if info, ok := errorCodeInfo[c]; ok {
		return info.name
	}
	return "UNKNOWN"
}

// String is the name and the number, e.g. "UNAUTHORIZED (4)".
func (c ErrorCode) String() string { return fmt.Sprintf("%s (%d)", c.Name(), uint16(c)) }

// Description is protocol.md's one-line meaning of the code.
func (c ErrorCode) Description() string {
	if info, ok := errorCodeInfo[c]; ok {
		return info.description
	}
	return "unknown error code"
}

// ClosesConnection reports whether the server closes the connection after this code. An
// unknown code does.
func (c ErrorCode) ClosesConnection() bool {
	if info, ok := errorCodeInfo[c]; ok {
		return info.closes
	}
	return true
}

// Retryable reports whether the same request, later or to another server, can succeed. An
// unknown code is not retryable.
func (c ErrorCode) Retryable() bool {
	if info, ok := errorCodeInfo[c]; ok {
		return info.retryable
	}
	return false
}

// frame is one decoded frame of either direction.
type frame interface{ opcode() byte }

type helloFrame struct {
	version uint16
	token   []byte
}

type leaseFrame struct{ requestID, count uint32 }

type pingFrame struct{ nonce uint64 }

type bulkLeaseFrame struct{ requestID, count uint32 }

// workerSet is what a version-2 WELCOME adds.
type workerSet struct {
	firstWorker, workerCount uint16
	maxBulk                  uint32
}

type welcomeFrame struct {
	version                                 uint16
	workerID                                uint16
	epochUnixMs                             uint64
	timestampBits, workerBits, sequenceBits uint8
	maxLease                                uint32
	serverUnixMs                            uint64
	// workers is present exactly when version >= 2.
	workers *workerSet
}

type leasedFrame struct {
	requestID uint32
	firstID   uint64
	count     uint32
}

type pongFrame struct{ nonce uint64 }

// run is count IDs of first_id's worker at consecutive positions (see Layout.blocks).
type run struct {
	firstID uint64
	count   uint32
}

type bulkLeasedFrame struct {
	requestID uint32
	runs      []run
}

type goAwayFrame struct{ reason uint16 }

type errorFrame struct {
	requestID uint32
	code      ErrorCode
	message   string
}

func (helloFrame) opcode() byte      { return opHello }
func (leaseFrame) opcode() byte      { return opLease }
func (pingFrame) opcode() byte       { return opPing }
func (bulkLeaseFrame) opcode() byte  { return opBulkLease }
func (welcomeFrame) opcode() byte    { return opWelcome }
func (leasedFrame) opcode() byte     { return opLeased }
func (pongFrame) opcode() byte       { return opPong }
func (bulkLeasedFrame) opcode() byte { return opBulkLeased }
func (goAwayFrame) opcode() byte     { return opGoAway }
func (errorFrame) opcode() byte      { return opError }

// wireError says why bytes are not a valid frame; the stream is corrupt.
type wireError struct{ msg string }

// Error is the description, as protocol.md quotes the server's.
func (e *wireError) Error() string { return e.msg }

func wireErrorf(format string, args ...interface{}) error {
	return &wireError{fmt.Sprintf(format, args...)}
}

func bodySizeError(name string, expected, got int) error {
	return wireErrorf("%s body must be %d bytes, got %d", name, expected, got)
}

// appendFrame appends f's bytes to dst. It refuses what the format cannot carry (a token
// over 255 bytes, a message over 1,015 bytes or not UTF-8, 0 or over 84 runs, a WELCOME
// whose worker set disagrees with its version) rather than cutting it.
func appendFrame(dst []byte, f frame) ([]byte, error) {
	switch f := f.(type) {
	case helloFrame:
		if len(f.token) > maxTokenLen {
			return dst, fmt.Errorf("HELLO token is %d bytes, the limit is %d", len(f.token), maxTokenLen)
		}
		dst = appendHeader(dst, 3+len(f.token), opHello)
		dst = binary.BigEndian.AppendUint16(dst, f.version)
		dst = append(dst, byte(len(f.token)))
		return append(dst, f.token...), nil
	case leaseFrame:
		return appendPair(dst, opLease, f.requestID, f.count), nil
	case bulkLeaseFrame:
		return appendPair(dst, opBulkLease, f.requestID, f.count), nil
	case pingFrame:
		return binary.BigEndian.AppendUint64(appendHeader(dst, 8, opPing), f.nonce), nil
	case pongFrame:
		return binary.BigEndian.AppendUint64(appendHeader(dst, 8, opPong), f.nonce), nil
	case welcomeFrame:
		return appendWelcome(dst, f)
	case leasedFrame:
		return appendLeased(dst, f.requestID, f.firstID, f.count), nil
	case bulkLeasedFrame:
		return appendBulkLeased(dst, f)
	case goAwayFrame:
		return binary.BigEndian.AppendUint16(appendHeader(dst, 2, opGoAway), f.reason), nil
	case errorFrame:
		return appendError(dst, f)
	}
	return dst, fmt.Errorf("cannot encode %T", f)
}

func appendHeader(dst []byte, bodyLen int, op byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(1+bodyLen))
	return append(dst, op)
}

func appendPair(dst []byte, op byte, a, b uint32) []byte {
	dst = appendHeader(dst, 8, op)
	dst = binary.BigEndian.AppendUint32(dst, a)
	return binary.BigEndian.AppendUint32(dst, b)
}

// appendLeased is the LEASED encoder without an interface conversion (fake servers' hot path).
func appendLeased(dst []byte, requestID uint32, firstID uint64, count uint32) []byte {
	dst = appendHeader(dst, 16, opLeased)
	dst = binary.BigEndian.AppendUint32(dst, requestID)
	dst = binary.BigEndian.AppendUint64(dst, firstID)
	return binary.BigEndian.AppendUint32(dst, count)
}

func appendWelcome(dst []byte, w welcomeFrame) ([]byte, error) {
	v2 := w.version >= protocolVersion2
	if v2 != (w.workers != nil) {
		return dst, fmt.Errorf("WELCOME version %d must carry the worker set exactly from version 2 on", w.version)
	}
	body := welcomeV1Body
	if v2 {
		body = welcomeV2Body
	}
	dst = appendHeader(dst, body, opWelcome)
	dst = binary.BigEndian.AppendUint16(dst, w.version)
	dst = binary.BigEndian.AppendUint16(dst, w.workerID)
	dst = binary.BigEndian.AppendUint64(dst, w.epochUnixMs)
	dst = append(dst, w.timestampBits, w.workerBits, w.sequenceBits)
	dst = binary.BigEndian.AppendUint32(dst, w.maxLease)
	dst = binary.BigEndian.AppendUint64(dst, w.serverUnixMs)
	if v2 {
		dst = binary.BigEndian.AppendUint16(dst, w.workers.firstWorker)
		dst = binary.BigEndian.AppendUint16(dst, w.workers.workerCount)
		dst = binary.BigEndian.AppendUint32(dst, w.workers.maxBulk)
	}
	return dst, nil
}

func appendBulkLeased(dst []byte, f bulkLeasedFrame) ([]byte, error) {
	if len(f.runs) == 0 || len(f.runs) > maxRuns {
		return dst, fmt.Errorf("BULK_LEASED carries %d runs, 1..%d allowed", len(f.runs), maxRuns)
	}
	dst = appendHeader(dst, 6+runBytes*len(f.runs), opBulkLeased)
	dst = binary.BigEndian.AppendUint32(dst, f.requestID)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(f.runs)))
	for _, r := range f.runs {
		dst = binary.BigEndian.AppendUint64(dst, r.firstID)
		dst = binary.BigEndian.AppendUint32(dst, r.count)
	}
	return dst, nil
}

func appendError(dst []byte, f errorFrame) ([]byte, error) {
	if len(f.message) > maxErrorMessage || !utf8.ValidString(f.message) {
		return dst, fmt.Errorf("ERROR message must be UTF-8 of at most %d bytes", maxErrorMessage)
	}
	dst = appendHeader(dst, 8+len(f.message), opError)
	dst = binary.BigEndian.AppendUint32(dst, f.requestID)
	dst = binary.BigEndian.AppendUint16(dst, uint16(f.code))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(f.message)))
	return append(dst, f.message...), nil
}

// frameLen returns the total size (prefix included) of the frame at the front of src once
// all of it is there: 0 if more bytes are needed, an error if the prefix is invalid. The
// prefix is checked as soon as its 4 bytes are in, before the caller buffers anything more.
func frameLen(src []byte) (int, error) {
	if len(src) < lenPrefix {
		return 0, nil
	}
	n := binary.BigEndian.Uint32(src)
	if n == 0 {
		return 0, wireErrorf("frame length 0 (a frame needs at least an opcode)")
	}
	if n > maxFrameLen {
		return 0, wireErrorf("frame length %d exceeds the limit of %d", n, maxFrameLen)
	}
	total := lenPrefix + int(n)
	if len(src) < total {
		return 0, nil
	}
	return total, nil
}

// decodeRequest splits one client frame off the front of src.
func decodeRequest(src []byte) (frame, int, error) {
	total, err := frameLen(src)
	if total == 0 || err != nil {
		return nil, 0, err
	}
	op, body := src[lenPrefix], src[lenPrefix+1:total]
	be := binary.BigEndian
	switch op {
	case opHello:
		if len(body) < 3 || len(body) != 3+int(body[2]) {
			expected := 3
			if len(body) >= 3 {
				expected += int(body[2])
			}
			return nil, 0, bodySizeError("HELLO", expected, len(body))
		}
		token := append([]byte{}, body[3:]...)
		return helloFrame{version: be.Uint16(body), token: token}, total, nil
	case opLease, opBulkLease, opPing:
		if len(body) != 8 {
			return nil, 0, bodySizeError(opcodeNames[op], 8, len(body))
		}
		switch op {
		case opLease:
			return leaseFrame{be.Uint32(body), be.Uint32(body[4:])}, total, nil
		case opBulkLease:
			return bulkLeaseFrame{be.Uint32(body), be.Uint32(body[4:])}, total, nil
		}
		return pingFrame{be.Uint64(body)}, total, nil
	}
	return nil, 0, wireErrorf("unknown opcode 0x%02x", op)
}

// decodeResponse splits one server frame off the front of src.
func decodeResponse(src []byte) (frame, int, error) {
	total, err := frameLen(src)
	if total == 0 || err != nil {
		return nil, 0, err
	}
	op, body := src[lenPrefix], src[lenPrefix+1:total]
	var f frame
	switch op {
	case opWelcome:
		f, err = decodeWelcome(body)
	case opLeased:
		f, err = decodeLeased(body)
	case opBulkLeased:
		f, err = decodeBulkLeased(body)
	case opPong:
		if len(body) != 8 {
			return nil, 0, bodySizeError("PONG", 8, len(body))
		}
		f = pongFrame{binary.BigEndian.Uint64(body)}
	case opGoAway:
		if len(body) != 2 {
			return nil, 0, bodySizeError("GOAWAY", 2, len(body))
		}
		f = goAwayFrame{binary.BigEndian.Uint16(body)}
	case opError:
		f, err = decodeError(body)
	default:
		return nil, 0, wireErrorf("unknown opcode 0x%02x", op)
	}
	if err != nil {
		return nil, 0, err
	}
	return f, total, nil
}

func decodeWelcome(body []byte) (frame, error) {
	be := binary.BigEndian
	var version uint16
	if len(body) >= 2 {
		version = be.Uint16(body)
	}
	expected := welcomeV1Body
	if version >= protocolVersion2 {
		expected = welcomeV2Body
	}
	if len(body) >= welcomeV1Body && len(body) != expected {
		return nil, wireErrorf("WELCOME version %d must carry %d body bytes", version, expected)
	}
	if len(body) != expected {
		return nil, bodySizeError("WELCOME", expected, len(body))
	}
	w := welcomeFrame{
		version:       version,
		workerID:      be.Uint16(body[2:]),
		epochUnixMs:   be.Uint64(body[4:]),
		timestampBits: body[12],
		workerBits:    body[13],
		sequenceBits:  body[14],
		maxLease:      be.Uint32(body[15:]),
		serverUnixMs:  be.Uint64(body[19:]),
	}
	if expected == welcomeV2Body {
		w.workers = &workerSet{be.Uint16(body[27:]), be.Uint16(body[29:]), be.Uint32(body[31:])}
	}
	return w, nil
}

func decodeLeased(body []byte) (frame, error) {
	if len(body) != 16 {
		return nil, bodySizeError("LEASED", 16, len(body))
	}
	be := binary.BigEndian
	return leasedFrame{be.Uint32(body), be.Uint64(body[4:]), be.Uint32(body[12:])}, nil
}

func decodeBulkLeased(body []byte) (frame, error) {
	be := binary.BigEndian
	runs := 1 // a body too short for run_count is reported as a size error below
	if len(body) >= 6 {
		runs = int(be.Uint16(body[4:]))
	}
	if runs == 0 || runs > maxRuns {
		return nil, wireErrorf("BULK_LEASED run count %d is outside 1..=%d", runs, maxRuns)
	}
	if len(body) != 6+runBytes*runs {
		return nil, bodySizeError("BULK_LEASED", 6+runBytes*runs, len(body))
	}
	f := bulkLeasedFrame{requestID: be.Uint32(body), runs: make([]run, runs)}
	for i := range f.runs {
		at := body[6+runBytes*i:]
		f.runs[i] = run{be.Uint64(at), be.Uint32(at[8:])}
	}
	return f, nil
}

func decodeError(body []byte) (frame, error) {
	be := binary.BigEndian
	declared := 0
	if len(body) >= 8 {
		declared = int(be.Uint16(body[6:]))
	}
	if len(body) != 8+declared {
		return nil, bodySizeError("ERROR", 8+declared, len(body))
	}
	if !utf8.Valid(body[8:]) {
		return nil, wireErrorf("ERROR message is not valid UTF-8")
	}
	return errorFrame{be.Uint32(body), ErrorCode(be.Uint16(body[4:])), string(body[8:])}, nil
}
