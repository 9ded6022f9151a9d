package snowlease

import (
	"bytes"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

func mustEncode(t testing.TB, f frame) []byte {
	t.Helper()
	b, err := appendFrame(nil, f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// everyFrame is one frame of each kind, both directions, both versions.
var everyFrame = []frame{
	helloFrame{version: 1, token: []byte("s3cret")},
	helloFrame{version: 2, token: []byte{}},
	leaseFrame{7, 4096},
	pingFrame{0x0123456789abcdef},
	bulkLeaseFrame{9, maxBulk},
	welcomeFrame{version: 1, workerID: 7, epochUnixMs: DefaultEpochUnixMilli, timestampBits: 41, workerBits: 10, sequenceBits: 12, maxLease: 4096, serverUnixMs: 1},
	welcomeFrame{version: 2, workerID: 7, epochUnixMs: 5, timestampBits: 41, workerBits: 10, sequenceBits: 12, maxLease: 4096, serverUnixMs: 2, workers: &workerSet{4, 4, maxBulk}},
	leasedFrame{7, 252584342323228672, 4096},
	pongFrame{5},
	bulkLeasedFrame{3, []run{{1, 2}, {3, 4}}},
	goAwayFrame{goAwayShutdown},
	errorFrame{0, CodeMalformed, "unknown opcode 0x42"},
	errorFrame{7, ErrorCode(99), ""},
}

func TestEveryFrameSurvivesARoundTripAndEveryStrictPrefixIsIncomplete(t *testing.T) {
	for _, f := range everyFrame {
		b := mustEncode(t, f)
		decode := decodeResponse
		if isRequest(f) {
			decode = decodeRequest
		}
		// Two frames back to back: the first is split off exactly.
		got, n, err := decode(append(append([]byte{}, b...), b...))
		if err != nil || n != len(b) || !reflect.DeepEqual(got, f) {
			t.Errorf("%T: decoded %+v, %d of %d bytes, %v", f, got, n, len(b), err)
		}
		for cut := 0; cut < len(b); cut++ {
			if g, n, err := decode(b[:cut]); g != nil || n != 0 || err != nil {
				t.Errorf("%T: %d bytes gave %+v %d %v", f, cut, g, n, err)
			}
		}
	}
}

func TestBadLengthPrefixesAreRefusedBeforeTheBodyArrives(t *testing.T) {
	for _, prefix := range [][]byte{{0, 0, 0, 0}, {0, 0, 4, 1}, {0xff, 0xff, 0xff, 0xff}} {
		_, _, err := decodeResponse(prefix)
		if err == nil {
			t.Errorf("% x accepted", prefix)
		}
	}
	_, _, err := decodeResponse([]byte{0, 0, 4, 0}) // 1024: legal, just incomplete
	if err != nil {
		t.Errorf("a 1024-byte frame is legal: %v", err)
	}
}

func TestFramesOfTheWrongSizeOrDirectionAreCorrupt(t *testing.T) {
	leased := mustEncode(t, leasedFrame{1, 2, 3})
	short := append([]byte{0, 0, 0, 16}, leased[4:20]...)
	cases := []struct {
		name  string
		bytes []byte
		want  string
	}{
		{"request opcode to a client", mustEncode(t, leaseFrame{1, 1}), "unknown opcode 0x02"},
		{"short LEASED", short, "LEASED body must be 16 bytes, got 15"},
		{"empty PONG", []byte{0, 0, 0, 1, opPong}, "PONG body must be 8 bytes, got 0"},
		{"long GOAWAY", []byte{0, 0, 0, 4, opGoAway, 0, 0, 0}, "GOAWAY body must be 2 bytes, got 3"},
		{"ERROR length disagrees", []byte{0, 0, 0, 10, opError, 0, 0, 0, 0, 0, 1, 0, 5, 'a'}, "ERROR body must be 13 bytes, got 9"},
		{"ERROR not UTF-8", []byte{0, 0, 0, 10, opError, 0, 0, 0, 0, 0, 1, 0, 1, 0xff}, "not valid UTF-8"},
		{"BULK_LEASED no runs", []byte{0, 0, 0, 7, opBulkLeased, 0, 0, 0, 1, 0, 0}, "run count 0"},
		{"BULK_LEASED too many runs", []byte{0, 0, 0, 7, opBulkLeased, 0, 0, 0, 1, 0, 85}, "run count 85"},
		{"BULK_LEASED runs missing", []byte{0, 0, 0, 7, opBulkLeased, 0, 0, 0, 1, 0, 1}, "BULK_LEASED body must be 18 bytes, got 6"},
	}
	for _, c := range cases {
		_, _, err := decodeResponse(c.bytes)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func TestAWelcomeWhoseSizeDisagreesWithItsVersionIsCorrupt(t *testing.T) {
	v1 := mustEncode(t, welcomeFrame{version: 1, timestampBits: 41, workerBits: 10, sequenceBits: 12})
	v1[6] = 2 // claims version 2 with a version-1 body
	if _, _, err := decodeResponse(v1); err == nil || !strings.Contains(err.Error(), "WELCOME version 2 must carry 35 body bytes") {
		t.Errorf("%v", err)
	}
	v2 := mustEncode(t, welcomeFrame{version: 2, workers: &workerSet{1, 1, 1}})
	v2[6] = 1
	if _, _, err := decodeResponse(v2); err == nil || !strings.Contains(err.Error(), "WELCOME version 1 must carry 27 body bytes") {
		t.Errorf("%v", err)
	}
	if _, _, err := decodeResponse([]byte{0, 0, 0, 2, opWelcome, 0}); err == nil || !strings.Contains(err.Error(), "WELCOME body must be 27 bytes, got 1") {
		t.Errorf("%v", err)
	}
}

func TestHellosWhoseTokenLengthDisagreesAreCorrupt(t *testing.T) {
	for _, b := range [][]byte{{0, 0, 0, 3, opHello, 0, 1}, {0, 0, 0, 5, opHello, 0, 1, 2, 'x'}} {
		if _, _, err := decodeRequest(b); err == nil || !strings.Contains(err.Error(), "HELLO body must be") {
			t.Errorf("% x: %v", b, err)
		}
	}
}

func TestTheEncoderRefusesWhatTheFormatCannotCarry(t *testing.T) {
	for _, f := range []frame{
		helloFrame{version: 1, token: make([]byte, 256)},
		errorFrame{message: strings.Repeat("x", maxErrorMessage+1)},
		errorFrame{message: "\xff"},
		bulkLeasedFrame{runs: nil},
		bulkLeasedFrame{runs: make([]run, maxRuns+1)},
		welcomeFrame{version: 2},
		welcomeFrame{version: 1, workers: &workerSet{}},
	} {
		if b, err := appendFrame([]byte{9}, f); err == nil || !bytes.Equal(b, []byte{9}) {
			t.Errorf("%T encoded: % x %v", f, b, err)
		}
	}
	b := mustEncode(t, errorFrame{message: strings.Repeat("é", maxErrorMessage/2)})
	if len(b) > lenPrefix+maxFrameLen {
		t.Errorf("frame of %d bytes", len(b))
	}
}

func TestDecodingArbitraryBytesNeverPanicsAndNeverOverreads(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	seeds := make([][]byte, 0, len(everyFrame))
	for _, f := range everyFrame {
		seeds = append(seeds, mustEncode(t, f))
	}
	for i := 0; i < 200_000; i++ {
		var b []byte
		if i%2 == 0 {
			b = append(b, seeds[rng.Intn(len(seeds))]...)
			for k := rng.Intn(4); k >= 0; k-- {
				if len(b) > 0 {
					b[rng.Intn(len(b))] = byte(rng.Intn(256))
				}
			}
			b = b[:rng.Intn(len(b)+1)]
		} else {
			b = make([]byte, rng.Intn(40))
			rng.Read(b)
			if len(b) >= 4 {
				b[0], b[1], b[2] = 0, 0, 0
			}
		}
		for _, decode := range []func([]byte) (frame, int, error){decodeRequest, decodeResponse} {
			f, n, err := decode(b)
			if n > len(b) || (f == nil) != (n == 0) || (err != nil && n != 0) {
				t.Fatalf("% x: %+v %d %v", b, f, n, err)
			}
		}
	}
}

func FuzzDecodeResponse(f *testing.F) {
	for _, fr := range everyFrame {
		b, _ := appendFrame(nil, fr)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := decodeResponse(b)
		if fr == nil {
			return
		}
		if err != nil || n > len(b) {
			t.Fatalf("%+v %d %v", fr, n, err)
		}
		again, err := appendFrame(nil, fr)
		if err != nil || !bytes.Equal(again, b[:n]) {
			t.Fatalf("decoded %+v does not re-encode to its bytes: % x vs % x (%v)", fr, again, b[:n], err)
		}
	})
}

func TestErrorCodesKnowTheirNamesAndTreatUnknownCodesAsClosingAndFinal(t *testing.T) {
	if CodeUnauthorized.String() != "UNAUTHORIZED (4)" || CodeUnavailable.Retryable() != true || CodeInvalidCount.ClosesConnection() {
		t.Error("table drift")
	}
	unknown := ErrorCode(42)
	if unknown.Name() != "UNKNOWN" || !unknown.ClosesConnection() || unknown.Retryable() {
		t.Error("unknown codes must close and not be retried")
	}
	if goAwayName(9) != "UNKNOWN" {
		t.Error("unknown GOAWAY reason")
	}
}
