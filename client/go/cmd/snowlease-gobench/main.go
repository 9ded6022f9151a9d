// Command snowlease-gobench measures the Go client's NextID throughput against running
// servers and prints one JSON object per run on stdout.
//
//	taskset -c 0 snowlease-server --listen 127.0.0.1:7609 --threads 1 --state-dir D &
//	taskset -c 1 snowlease-gobench -addr 127.0.0.1:7609 -goroutines 1,4 -rounds 3
//
// For each round and goroutine count it dials a fresh client, lets the goroutines call
// NextID in a loop for -warmup (which uses up the server's lead and lets the refill learn
// the rate), then counts the IDs handed out during -duration. ids_per_sec is that count over
// the measured time; ratio compares it with the ceiling, 4,096,000 IDs/s per worker id seen
// (one worker issues at most 4,096 IDs per millisecond). With -window the run also prints
// the IDs handed out in every window of that length (issue 16's "worst window"), and with
// -latency every call is timed (about 25 ns more per call) and the longest reported.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	snowlease "example.invalid/snowlease/client/go"
)

// ceilingPerWorker is one worker's most IDs per second: 4,096 per millisecond.
const ceilingPerWorker = 4_096_000

// checkEvery: calls between publishing a goroutine's count and looking at the stop flag;
// at ~30 ns a call that is every ~8 µs, so the stop lands within microseconds while the
// shared cache line is touched once per 256 calls.
const checkEvery = 256

type result struct {
	Round       int     `json:"round"`
	Goroutines  int     `json:"goroutines"`
	GoMaxProcs  int     `json:"gomaxprocs"`
	Seconds     float64 `json:"seconds"`
	IDs         uint64  `json:"ids"`
	IDsPerSec   float64 `json:"ids_per_sec"`
	Ceiling     float64 `json:"ceiling"`
	Ratio       float64 `json:"ratio"`
	Workers     []int   `json:"workers"`
	Errors      uint64  `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	MaxWaitUs   float64 `json:"max_wait_us,omitempty"`
	WindowMs    float64 `json:"window_ms,omitempty"`
	Windows     []int64 `json:"windows,omitempty"`
	WorstWindow int64   `json:"worst_window,omitempty"`
}

// counter is one goroutine's published count, padded to its own cache line.
type counter struct {
	n atomic.Uint64
	_ [56]byte
}

func main() {
	addrs := flag.String("addr", "127.0.0.1:7609", "comma-separated server addresses or names")
	goroutines := flag.String("goroutines", "1,4", "comma-separated goroutine counts, one run each")
	rounds := flag.Int("rounds", 1, "rounds of every goroutine count")
	duration := flag.Duration("duration", 5*time.Second, "measured time per run")
	warmup := flag.Duration("warmup", time.Second, "unmeasured time before each run")
	window := flag.Duration("window", 0, "also report IDs per window of this length")
	latency := flag.Bool("latency", false, "time every call and report the longest")
	token := flag.String("token", "", "shared token")
	ca := flag.String("ca", "", "TLS CA file (enables TLS)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of all runs to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	counts, err := parseCounts(*goroutines)
	if err != nil {
		fatal(err)
	}
	opts := []snowlease.Option{}
	if *token != "" {
		opts = append(opts, snowlease.WithToken(*token))
	}
	if *ca != "" {
		opts = append(opts, snowlease.WithTLSCAFile(*ca))
	}
	for round := 1; round <= *rounds; round++ {
		for _, n := range counts {
			r, err := run(strings.Split(*addrs, ","), opts, n, *warmup, *duration, *window, *latency)
			if err != nil {
				pprof.StopCPUProfile()
				fatal(err)
			}
			r.Round = round
			out, _ := json.Marshal(r)
			fmt.Println(string(out))
		}
	}
}

func parseCounts(text string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(text, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad goroutine count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "snowlease-gobench:", err)
	os.Exit(1)
}

// load is the shared state of one run's goroutines.
type load struct {
	client   *snowlease.Client
	stop     atomic.Bool
	counts   []counter
	errs     atomic.Uint64
	firstErr atomic.Value
	maxWait  atomic.Int64
	mu       sync.Mutex
	workers  map[uint16]bool
	latency  bool
}

func run(addrs []string, opts []snowlease.Option, n int, warmup, duration, window time.Duration, latency bool) (result, error) {
	c, err := snowlease.Dial(context.Background(), addrs, opts...)
	if err != nil {
		return result{}, err
	}
	defer c.Close()
	l := &load{client: c, counts: make([]counter, n), workers: map[uint16]bool{}, latency: latency}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); l.draw(&l.counts[i]) }(i)
	}
	time.Sleep(warmup)
	l.maxWait.Store(0)
	start, base := time.Now(), l.total()
	windows := sampleWindows(l, start, duration, window)
	end, total := time.Now(), l.total()
	l.stop.Store(true)
	wg.Wait()
	secs := end.Sub(start).Seconds()
	r := result{Goroutines: n, GoMaxProcs: runtime.GOMAXPROCS(0), Seconds: secs, IDs: total - base,
		Errors: l.errs.Load(), MaxWaitUs: float64(l.maxWait.Load()) / 1e3}
	r.IDsPerSec = float64(r.IDs) / secs
	for w := range l.workers {
		r.Workers = append(r.Workers, int(w))
	}
	sort.Ints(r.Workers)
	r.Ceiling = float64(ceilingPerWorker * len(r.Workers))
	if r.Ceiling > 0 {
		r.Ratio = r.IDsPerSec / r.Ceiling
	}
	if e, ok := l.firstErr.Load().(string); ok {
		r.FirstError = e
	}
	if window > 0 {
		r.WindowMs, r.Windows = float64(window)/1e6, windows
		r.WorstWindow = windows[0]
		for _, w := range windows {
			if w < r.WorstWindow {
				r.WorstWindow = w
			}
		}
	}
	return r, nil
}

// sampleWindows sleeps through the measured time, recording the IDs of each window.
func sampleWindows(l *load, start time.Time, duration, window time.Duration) []int64 {
	if window <= 0 {
		time.Sleep(duration)
		return nil
	}
	var out []int64
	prev := l.total()
	for at := window; at <= duration; at += window {
		time.Sleep(time.Until(start.Add(at)))
		now := l.total()
		out = append(out, int64(now-prev))
		prev = now
	}
	return out
}

func (l *load) total() uint64 {
	var t uint64
	for i := range l.counts {
		t += l.counts[i].n.Load()
	}
	return t
}

// draw calls NextID until stopped, publishing its count every checkEvery calls and noting
// the worker of one ID per batch.
func (l *load) draw(own *counter) {
	ctx := context.Background()
	var done uint64
	for !l.stop.Load() {
		var last int64 = -1
		for k := 0; k < checkEvery; k++ {
			var id int64
			var err error
			if l.latency {
				t0 := time.Now()
				id, err = l.client.NextID(ctx)
				if d := int64(time.Since(t0)); d > l.maxWait.Load() {
					l.maxWait.Store(d) // racy max: good enough for a report
				}
			} else {
				id, err = l.client.NextID(ctx)
			}
			if err != nil {
				l.errs.Add(1)
				l.firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			done++
			last = id
		}
		own.n.Store(done)
		if last >= 0 {
			l.noteWorker(l.client.Decode(last).Worker)
		}
	}
}

func (l *load) noteWorker(w uint16) {
	l.mu.Lock()
	l.workers[w] = true
	l.mu.Unlock()
}
