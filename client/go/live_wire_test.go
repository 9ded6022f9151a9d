package snowlease

// The codec against a live server's bytes: a version-1 greeting and lease, and a HELLO
// asking for version 2, answered with the highest version both speak. Against a server
// that speaks version 2 the 35-byte WELCOME and a BULK_LEASED are decoded and checked too.

import (
	"bufio"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// exchange sends requests on a fresh connection and reads n replies.
func exchange(t *testing.T, addr string, n int, requests ...frame) []frame {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var out []byte
	for _, r := range requests {
		out = append(out, mustEncode(t, r)...)
	}
	if _, err := conn.Write(out); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	var buf [lenPrefix + maxFrameLen]byte
	var replies []frame
	for i := 0; i < n; i++ {
		f, err := readFrame(r, &buf)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		replies = append(replies, f)
	}
	return replies
}

func TestALiveServersFramesDecodeAndPassTheClientsChecks(t *testing.T) {
	s := startServer(t, 7)
	got := exchange(t, s.addr, 3, helloFrame{version: 1}, leaseFrame{7, 4096}, pingFrame{9})
	w, ok := got[0].(welcomeFrame)
	if !ok || w.version != 1 || w.workers != nil {
		t.Fatalf("WELCOME %+v", got[0])
	}
	l, err := checkWelcome(w, nil)
	if err != nil {
		t.Fatal(err)
	}
	lf, ok := got[1].(leasedFrame)
	if !ok {
		t.Fatalf("LEASED %+v", got[1])
	}
	if _, err := checkLeased(l, 7, &asked{7, 4096}, 0, false, lf); err != nil {
		t.Fatal(err)
	}
	if got[2] != (pongFrame{9}) {
		t.Fatalf("PONG %+v", got[2])
	}

	w2, ok := exchange(t, s.addr, 1, helloFrame{version: 2})[0].(welcomeFrame)
	if !ok || w2.version < 1 || w2.version > 2 || (w2.version == 2) != (w2.workers != nil) {
		t.Fatalf("WELCOME to HELLO version 2: %+v", w2)
	}
	if w2.version == 1 {
		t.Log("the server speaks version 1 only; version-2 frames checked against protocol.md's format only")
		return
	}
	set := *w2.workers
	if set.workerCount < 1 || !(set.firstWorker <= w2.workerID && w2.workerID < set.firstWorker+set.workerCount) || set.maxBulk < 1 {
		t.Fatalf("worker set %+v for home worker %d", set, w2.workerID)
	}
	bulk := exchange(t, s.addr, 2, helloFrame{version: 2}, bulkLeaseFrame{3, 10_000})[1]
	bl, ok := bulk.(bulkLeasedFrame)
	if !ok || bl.requestID != 3 {
		t.Fatalf("BULK_LEASED %+v", bulk)
	}
	var total uint64
	for _, r := range bl.runs {
		for _, b := range l.blocks(r.firstID, r.count) {
			p := l.decompose(b.firstID)
			if p.Worker < set.firstWorker || p.Worker >= set.firstWorker+set.workerCount || uint64(p.Sequence)+uint64(b.count) > uint64(l.MaxLease()) {
				t.Fatalf("block %+v outside the set or its tick", b)
			}
			total += uint64(b.count)
		}
	}
	if total < 1 || total > 10_000 {
		t.Fatalf("%d IDs for a BULK_LEASE of 10,000", total)
	}
}

func TestAServerHoldingSeveralWorkersServesThisVersion1ClientAcrossRestarts(t *testing.T) {
	help, _ := exec.Command(serverBin(t), "--help").Output()
	if !strings.Contains(string(help), "--worker-ids") {
		t.Skip("this server holds one worker id (no --worker-ids)")
	}
	s := startServer(t, 40, "--worker-ids", "40-43")
	c := dial(t, []string{s.addr}, quick()...)
	load := startCallers(t, c, 4, 500, time.Millisecond)
	seen := func() (n int, total int64) {
		for w := 40; w <= 43; w++ {
			if load.count(w) > 0 {
				n++
			}
			total += load.count(w)
		}
		return n, total
	}
	waitUntil(t, "100,000 IDs", func() bool { _, total := seen(); return total >= 100_000 })
	for i := 0; i < 3; i++ { // each reconnect may be pinned to another worker of the set
		s.term()
		s.restart()
		_, before := seen()
		waitUntil(t, "100,000 more IDs", func() bool { _, total := seen(); return total >= before+100_000 })
	}
	load.finish(t)
	n, total := seen()
	t.Logf("%d IDs from %d of the workers 40-43", total, n)
}
