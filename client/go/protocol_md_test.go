package snowlease

// protocol.md checked against the Go codec, so the two cannot drift apart.
//
// Like the Rust test (client/tests/protocol_md.rs), this reads every "hex:" block of the
// document at test time, checks each field's bytes against its decoded value and its human
// reading, builds the frame from the decoded values, compares the codec's encoding byte for
// byte, and decodes the documented bytes back (every strict prefix must be "incomplete", never
// an error). A dump whose frame name the codec does not know fails. The opcode, error code
// and GOAWAY tables are compared with the codec's constants.

import (
	"encoding/hex"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

const protocolMD = "../../protocol.md"

// mdField is one annotated field of a dump: its bytes and what the document says they mean.
type mdField struct {
	name    string
	num     uint64
	text    string
	isText  bool
	comment string
	bytes   []byte
}

// mdDump is one "hex:" block.
type mdDump struct {
	title  string
	line   int
	fields []mdField
}

func (d *mdDump) String() string {
	return fmt.Sprintf("protocol.md line %d (hex: %s)", d.line, d.title)
}

func (d *mdDump) frameName() string {
	if f := strings.Fields(d.title); len(f) > 0 {
		return f[0]
	}
	return ""
}

func (d *mdDump) bytes() []byte {
	var out []byte
	for _, f := range d.fields {
		out = append(out, f.bytes...)
	}
	return out
}

func (d *mdDump) field(name string) (mdField, error) {
	for _, f := range d.fields {
		if f.name == name {
			return f, nil
		}
	}
	return mdField{}, fmt.Errorf("%v: no field %s", d, name)
}

// splitDumpLine splits a dump line into its leading hex bytes and the annotation after them.
func splitDumpLine(line string) ([]byte, string) {
	var out []byte
	rest := strings.TrimLeft(line, " \t")
	for {
		tok := strings.Fields(rest)
		if len(tok) == 0 || len(tok[0]) != 2 {
			return out, strings.TrimSpace(rest)
		}
		b, err := hex.DecodeString(tok[0])
		if err != nil {
			return out, strings.TrimSpace(rest)
		}
		out = append(out, b[0])
		rest = strings.TrimLeft(rest[2:], " \t")
	}
}

// parseAnnotation parses `name = value (comment)`; value is decimal, 0x hex or "quoted".
func parseAnnotation(text string) (mdField, error) {
	name, rest, ok := strings.Cut(text, "=")
	if !ok {
		return mdField{}, fmt.Errorf("expected `name = value`, got %q", text)
	}
	f := mdField{name: strings.TrimSpace(name)}
	rest = strings.TrimSpace(rest)
	var comment string
	if strings.HasPrefix(rest, `"`) {
		end := strings.LastIndex(rest, `"`)
		if end == 0 {
			return mdField{}, fmt.Errorf("unterminated string in %q", text)
		}
		f.text, f.isText, comment = rest[1:end], true, rest[end+1:]
	} else {
		number, after, _ := strings.Cut(rest, " ")
		var err error
		if h := strings.TrimPrefix(number, "0x"); h != number {
			f.num, err = strconv.ParseUint(h, 16, 64)
		} else {
			f.num, err = strconv.ParseUint(number, 10, 64)
		}
		if err != nil {
			return mdField{}, fmt.Errorf("%q is not a number in %q", number, text)
		}
		comment = after
	}
	comment = strings.TrimSpace(comment)
	if strings.HasPrefix(comment, "(") && strings.HasSuffix(comment, ")") {
		comment = comment[1 : len(comment)-1]
	}
	f.comment = comment
	return f, nil
}

// parseDumps finds every "hex:" block inside the fenced code blocks of doc. A dump ends at
// a blank line, the next marker or the end of its code block.
func parseDumps(doc string) ([]*mdDump, error) {
	var out []*mdDump
	inFence, open := false, false
	for i, line := range strings.Split(doc, "\n") {
		switch {
		case strings.HasPrefix(strings.TrimLeft(line, " "), "```"):
			inFence, open = !inFence, false
			continue
		case !inFence:
			continue
		case strings.HasPrefix(line, "hex:"):
			out = append(out, &mdDump{title: strings.TrimSpace(line[4:]), line: i + 1})
			open = true
			continue
		case strings.TrimSpace(line) == "":
			open = false
			continue
		case !open:
			continue
		}
		d := out[len(out)-1]
		bytes, annotation := splitDumpLine(line)
		if annotation == "" {
			if len(d.fields) == 0 {
				return nil, fmt.Errorf("protocol.md line %d: bytes before any field", i+1)
			}
			last := &d.fields[len(d.fields)-1]
			last.bytes = append(last.bytes, bytes...)
			continue
		}
		f, err := parseAnnotation(annotation)
		if err != nil {
			return nil, fmt.Errorf("protocol.md line %d: %v", i+1, err)
		}
		f.bytes = bytes
		d.fields = append(d.fields, f)
	}
	if inFence {
		return nil, fmt.Errorf("protocol.md ends inside a code block")
	}
	return out, nil
}

// expectedFields lists the fields each frame's dump annotates, in wire order. BULK_LEASED's
// runs repeat first_id/count after run_count; a version-2 WELCOME adds welcomeV2Fields.
var expectedFields = map[string][]string{
	"HELLO":       {"length", "opcode", "version", "token_len", "token"},
	"LEASE":       {"length", "opcode", "request_id", "count"},
	"BULK_LEASE":  {"length", "opcode", "request_id", "count"},
	"PING":        {"length", "opcode", "nonce"},
	"PONG":        {"length", "opcode", "nonce"},
	"WELCOME":     {"length", "opcode", "version", "worker_id", "epoch_unix_ms", "timestamp_bits", "worker_bits", "sequence_bits", "max_lease", "server_unix_ms"},
	"LEASED":      {"length", "opcode", "request_id", "first_id", "count"},
	"BULK_LEASED": {"length", "opcode", "request_id", "run_count"},
	"GOAWAY":      {"length", "opcode", "reason"},
	"ERROR":       {"length", "opcode", "request_id", "code", "message_len", "message"},
}

var welcomeV2Fields = []string{"first_worker", "worker_count", "max_bulk"}

// fieldWidth is the bytes an integer field occupies; text fields have none.
var fieldWidth = map[string]int{
	"opcode": 1, "token_len": 1, "timestamp_bits": 1, "worker_bits": 1, "sequence_bits": 1,
	"version": 2, "worker_id": 2, "reason": 2, "code": 2, "message_len": 2, "run_count": 2,
	"first_worker": 2, "worker_count": 2,
	"length": 4, "request_id": 4, "count": 4, "max_lease": 4, "max_bulk": 4,
	"nonce": 8, "epoch_unix_ms": 8, "server_unix_ms": 8, "first_id": 8,
}

// checkFieldNames checks the dump annotates exactly its frame's fields, in order.
func checkFieldNames(d *mdDump) error {
	want, known := expectedFields[d.frameName()]
	if !known {
		return fmt.Errorf("%v: the codec knows no frame named %q", d, d.frameName())
	}
	want = append([]string{}, want...)
	var got []string
	for _, f := range d.fields {
		got = append(got, f.name)
	}
	switch d.frameName() {
	case "WELCOME":
		if len(got) > len(want) {
			want = append(want, welcomeV2Fields...)
		}
	case "BULK_LEASED":
		if rc, err := d.field("run_count"); err == nil {
			for i := uint64(0); i < rc.num && i <= maxRuns; i++ {
				want = append(want, "first_id", "count")
			}
		}
	}
	if !reflect.DeepEqual(got, want) {
		return fmt.Errorf("%v: fields %v, want %v", d, got, want)
	}
	return nil
}

// checkFieldValue checks one field's bytes against its value and its human reading.
func checkFieldValue(d *mdDump, f mdField) error {
	width, isNum := fieldWidth[f.name]
	if f.isText {
		if isNum || string(f.bytes) != f.text {
			return fmt.Errorf("%v: %s bytes are not its text %q", d, f.name, f.text)
		}
		return nil
	}
	if !isNum || len(f.bytes) != width {
		return fmt.Errorf("%v: %s takes %d bytes, has %d", d, f.name, width, len(f.bytes))
	}
	var v uint64
	for _, b := range f.bytes {
		v = v<<8 | uint64(b)
	}
	if v != f.num {
		return fmt.Errorf("%v: %s bytes say %d, the annotation %d", d, f.name, v, f.num)
	}
	reading, ok := "", true
	switch f.name {
	case "opcode":
		reading = d.frameName()
	case "code":
		reading = ErrorCode(f.num).Name()
	case "reason":
		reading = goAwayName(uint16(f.num))
	case "first_id":
		reading = DefaultLayout.decompose(f.num).String()
	case "epoch_unix_ms", "server_unix_ms":
		reading = formatUnixMilli(f.num)
	default:
		ok = false
	}
	if ok && f.comment != reading {
		return fmt.Errorf("%v: the reading beside %s is %q, the codec says %q", d, f.name, f.comment, reading)
	}
	return nil
}

// buildFrame is the frame the dump's decoded fields describe, built with the codec's types.
func buildFrame(d *mdDump) (frame, error) {
	v := map[string]uint64{}
	texts := map[string]string{}
	for _, f := range d.fields {
		v[f.name], texts[f.name] = f.num, f.text
	}
	switch d.frameName() {
	case "HELLO":
		return helloFrame{version: uint16(v["version"]), token: []byte(texts["token"])}, nil
	case "LEASE":
		return leaseFrame{uint32(v["request_id"]), uint32(v["count"])}, nil
	case "BULK_LEASE":
		return bulkLeaseFrame{uint32(v["request_id"]), uint32(v["count"])}, nil
	case "PING":
		return pingFrame{v["nonce"]}, nil
	case "PONG":
		return pongFrame{v["nonce"]}, nil
	case "WELCOME":
		return buildWelcome(v), nil
	case "LEASED":
		return leasedFrame{uint32(v["request_id"]), v["first_id"], uint32(v["count"])}, nil
	case "BULK_LEASED":
		f := bulkLeasedFrame{requestID: uint32(v["request_id"])}
		for i := 4; i+1 < len(d.fields); i += 2 {
			f.runs = append(f.runs, run{d.fields[i].num, uint32(d.fields[i+1].num)})
		}
		return f, nil
	case "GOAWAY":
		return goAwayFrame{uint16(v["reason"])}, nil
	case "ERROR":
		return errorFrame{uint32(v["request_id"]), ErrorCode(v["code"]), texts["message"]}, nil
	}
	return nil, fmt.Errorf("%v: the codec knows no frame named %q", d, d.frameName())
}

func buildWelcome(v map[string]uint64) welcomeFrame {
	w := welcomeFrame{
		version: uint16(v["version"]), workerID: uint16(v["worker_id"]), epochUnixMs: v["epoch_unix_ms"],
		timestampBits: uint8(v["timestamp_bits"]), workerBits: uint8(v["worker_bits"]),
		sequenceBits: uint8(v["sequence_bits"]), maxLease: uint32(v["max_lease"]), serverUnixMs: v["server_unix_ms"],
	}
	if w.version >= protocolVersion2 {
		w.workers = &workerSet{uint16(v["first_worker"]), uint16(v["worker_count"]), uint32(v["max_bulk"])}
	}
	return w
}

func isRequest(f frame) bool { return f.opcode() < 0x80 }

// checkDump runs every check on one dump.
func checkDump(d *mdDump) error {
	if err := checkFieldNames(d); err != nil {
		return err
	}
	for _, f := range d.fields {
		if err := checkFieldValue(d, f); err != nil {
			return err
		}
	}
	want, err := buildFrame(d)
	if err != nil {
		return err
	}
	documented := d.bytes()
	encoded, err := appendFrame(nil, want)
	if err != nil || hex.EncodeToString(encoded) != hex.EncodeToString(documented) {
		return fmt.Errorf("%v: the codec encodes %+v as % x (%v), the document says % x", d, want, encoded, err, documented)
	}
	decode := decodeResponse
	if isRequest(want) {
		decode = decodeRequest
	}
	got, n, err := decode(documented)
	if err != nil || n != len(documented) || !reflect.DeepEqual(got, want) {
		return fmt.Errorf("%v: decoding gives %+v, %d bytes, %v; want %+v", d, got, n, err, want)
	}
	for cut := 0; cut < len(documented); cut++ {
		if f, n, err := decode(documented[:cut]); f != nil || n != 0 || err != nil {
			return fmt.Errorf("%v: %d bytes are not a frame yet, got %+v, %v", d, cut, f, err)
		}
	}
	return nil
}

func readProtocolMD(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(protocolMD)
	if err != nil {
		t.Fatalf("cannot read %s: %v", protocolMD, err)
	}
	return string(doc)
}

func TestEveryHexDumpInProtocolMDIsExactlyWhatTheCodecEncodesAndDecodes(t *testing.T) {
	dumps, err := parseDumps(readProtocolMD(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(dumps) < 18 {
		t.Fatalf("only %d dumps found", len(dumps))
	}
	for _, d := range dumps {
		if err := checkDump(d); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d dumps checked", len(dumps))
}

func TestEveryFrameErrorCodeAndGoAwayReasonOfVersion1HasADump(t *testing.T) {
	dumps, err := parseDumps(readProtocolMD(t))
	if err != nil {
		t.Fatal(err)
	}
	titles := map[string]bool{}
	for _, d := range dumps {
		if titles[d.title] {
			t.Errorf("duplicate dump title %q", d.title)
		}
		titles[d.title] = true
	}
	want := []string{"HELLO", "HELLO with token", "LEASE", "PING", "WELCOME", "LEASED", "PONG"}
	for _, r := range []uint16{goAwayShutdown, goAwayIdleTimeout, goAwayWriteTimeout} {
		want = append(want, "GOAWAY "+goAwayName(r))
	}
	for _, c := range allErrorCodes {
		want = append(want, "ERROR "+c.Name())
	}
	for _, w := range want {
		if !titles[w] {
			t.Errorf("protocol.md has no dump %q", w)
		}
	}
}

func TestADumpOfAFrameTheCodecDoesNotKnowFailsTheCheck(t *testing.T) {
	doc := "```text\nhex: FROB\n00 00 00 01               length = 1\n42                        opcode = 0x42 (FROB)\n```\n"
	dumps, err := parseDumps(doc)
	if err != nil || len(dumps) != 1 {
		t.Fatalf("%v %v", dumps, err)
	}
	err = checkDump(dumps[0])
	if err == nil || !strings.Contains(err.Error(), `knows no frame named "FROB"`) {
		t.Fatalf("an unknown frame passed: %v", err)
	}
}

func TestADumpWhoseBytesDisagreeWithItsAnnotationFailsTheCheck(t *testing.T) {
	doc := "```text\nhex: LEASE\n00 00 00 09               length = 9\n02                        opcode = 0x02 (LEASE)\n" +
		"00 00 00 07               request_id = 8\n00 00 10 00               count = 4096\n```\n"
	dumps, err := parseDumps(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkDump(dumps[0]); err == nil || !strings.Contains(err.Error(), "request_id bytes say 7") {
		t.Fatalf("a wrong annotation passed: %v", err)
	}
}

// v2Dumps are version-2 vectors beside protocol.md's own (which the test above reads), in
// its dump format and through the same parser and checks: the largest BULK_LEASE count
// (max_bulk) and a BULK_LEASED whose runs belong to two workers of one tick.
const v2Dumps = "```text\n" + `hex: WELCOME version 2
00 00 00 24               length = 36
81                        opcode = 0x81 (WELCOME)
00 02                     version = 2
00 07                     worker_id = 7
00 00 01 8c c2 51 f4 00   epoch_unix_ms = 1704067200000 (2024-01-01T00:00:00.000Z)
29                        timestamp_bits = 41
0a                        worker_bits = 10
0c                        sequence_bits = 12
00 00 10 00               max_lease = 4096
00 00 01 9a c7 c2 70 00   server_unix_ms = 1764288000000 (2025-11-28T00:00:00.000Z)
00 04                     first_worker = 4
00 04                     worker_count = 4
00 40 00 00               max_bulk = 4194304
` + "```\n\n```text\n" + `hex: BULK_LEASE
00 00 00 09               length = 9
04                        opcode = 0x04 (BULK_LEASE)
00 00 00 07               request_id = 7
00 40 00 00               count = 4194304
` + "```\n\n```text\n" + `hex: BULK_LEASED
00 00 00 1f               length = 31
84                        opcode = 0x84 (BULK_LEASED)
00 00 00 07               request_id = 7
00 02                     run_count = 2
03 81 5c 1f 00 00 70 00   first_id = 252584342323228672 (2025-11-28T00:00:00.000Z worker 7 sequence 0)
00 00 20 00               count = 8192
03 81 5c 1f 00 00 80 00   first_id = 252584342323232768 (2025-11-28T00:00:00.000Z worker 8 sequence 0)
00 00 10 00               count = 4096
` + "```\n"

func TestVersion2FramesRoundTripThroughTheSameChecks(t *testing.T) {
	dumps, err := parseDumps(v2Dumps)
	if err != nil {
		t.Fatal(err)
	}
	var titles []string
	for _, d := range dumps {
		titles = append(titles, d.title)
		if err := checkDump(d); err != nil {
			t.Error(err)
		}
	}
	if want := []string{"WELCOME version 2", "BULK_LEASE", "BULK_LEASED"}; !reflect.DeepEqual(titles, want) {
		t.Fatalf("titles %v", titles)
	}
}

// mdTable returns the rows of the markdown table whose header line is exactly header.
func mdTable(t *testing.T, doc, header string) [][]string {
	t.Helper()
	lines := strings.Split(doc, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != header {
			continue
		}
		var rows [][]string
		for _, row := range lines[i+2:] {
			if !strings.HasPrefix(strings.TrimLeft(row, " "), "|") {
				break
			}
			var cells []string
			for _, c := range strings.Split(strings.Trim(strings.TrimSpace(row), "|"), "|") {
				cells = append(cells, strings.TrimSpace(c))
			}
			rows = append(rows, cells)
		}
		return rows
	}
	t.Fatalf("protocol.md has no table headed %s", header)
	return nil
}

func TestTheErrorTableListsEveryCodeExactlyAsTheCodecDefinesIt(t *testing.T) {
	rows := mdTable(t, readProtocolMD(t), "| Code | Name | Closes connection | Retryable | Meaning |")
	yes := map[bool]string{true: "yes", false: "no"}
	var want [][]string
	for _, c := range allErrorCodes {
		want = append(want, []string{fmt.Sprint(uint16(c)), c.Name(), yes[c.ClosesConnection()], yes[c.Retryable()], c.Description()})
	}
	if !reflect.DeepEqual(rows, want) {
		t.Fatalf("error table\n got %v\nwant %v", rows, want)
	}
}

func TestTheGoAwayAndOpcodeTablesMatchTheCodec(t *testing.T) {
	doc := readProtocolMD(t)
	for _, row := range mdTable(t, doc, "| Reason | Name | Meaning |") {
		r, err := strconv.ParseUint(row[0], 10, 16)
		if err != nil || goAwayName(uint16(r)) != row[1] {
			t.Errorf("GOAWAY table row %v", row)
		}
	}
	listed := map[byte]bool{}
	for _, row := range mdTable(t, doc, "| Opcode | Name | Direction | Body bytes | Meaning |") {
		op, err := strconv.ParseUint(strings.TrimPrefix(row[0], "0x"), 16, 8)
		if err != nil || opcodeNames[byte(op)] != row[1] {
			t.Errorf("opcode table row %v", row)
		}
		listed[byte(op)] = true
	}
	// Version-1 opcodes must all be documented; version-2 ones once the spec has them.
	for _, op := range []byte{opHello, opLease, opPing, opWelcome, opLeased, opPong, opGoAway, opError} {
		if !listed[op] {
			t.Errorf("opcode 0x%02X (%s) is not in the table", op, opcodeNames[op])
		}
	}
}

func TestTheLimitsAndMessagesQuotedInProtocolMDAreTheCodecs(t *testing.T) {
	doc := readProtocolMD(t)
	rows := map[string][]string{}
	for _, r := range mdTable(t, doc, "| Limit | Default | Setting | Notes |") {
		rows[r[0]] = r
	}
	leading := func(cell string) uint64 {
		digits := strings.Map(func(r rune) rune {
			if r == ',' {
				return -1
			}
			return r
		}, strings.Fields(cell)[0])
		n, _ := strconv.ParseUint(digits, 10, 64)
		return n
	}
	for name, want := range map[string]uint64{
		"Frame length (opcode + body)": maxFrameLen,
		"HELLO token":                  maxTokenLen,
		"ERROR message":                maxErrorMessage,
		"LEASE count (`max_lease`)":    uint64(DefaultLayout.MaxLease()),
		"Lease port":                   DefaultPort,
	} {
		if got := leading(rows[name][1]); got != want {
			t.Errorf("limits table %q: %d, the codec %d", name, got, want)
		}
	}
	_, err0 := frameLen([]byte{0, 0, 0, 0})
	_, errLong := frameLen([]byte{0, 0, 0x13, 0x88})
	_, _, errOp := decodeRequest([]byte{0, 0, 0, 1, 0x42})
	_, _, errSize := decodeRequest([]byte{0, 0, 0, 5, 2, 0, 0, 0, 1})
	for _, err := range []error{err0, errLong, errOp, errSize} {
		if err == nil || !strings.Contains(doc, "`"+err.Error()+"`") {
			t.Errorf("protocol.md does not quote the codec's message `%v`", err)
		}
	}
}
