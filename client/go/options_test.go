package snowlease

import (
	"errors"
	"math/rand"
	"strings"
	"testing"
	"time"
)

func TestEndpointsParseInEveryDocumentedForm(t *testing.T) {
	for text, want := range map[string]target{
		"127.0.0.1:9":  {"127.0.0.1", "9", true},
		"[::1]:9":      {"::1", "9", true},
		" 10.0.0.1 ":   {"10.0.0.1", "7609", true},
		"::1":          {"::1", "7609", true},
		"[::1]":        {"::1", "7609", true},
		"ids.svc:80":   {"ids.svc", "80", false},
		"ids":          {"ids", "7609", false},
		"localhost:77": {"localhost", "77", false},
	} {
		got, err := parseEndpoint(text)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v", text, got, err)
		}
	}
}

func TestBadEndpointsAreRefusedWithTheReason(t *testing.T) {
	for text, why := range map[string]string{
		"":              "empty",
		":80":           "no host",
		"ids:http":      "port must be",
		"ids:0":         "port must be",
		"ids:70000":     "port must be",
		"fe80::1::2:80": "IPv6",
	} {
		_, err := parseEndpoint(text)
		if err == nil || !strings.Contains(err.Error(), why) || !errors.Is(err, ErrConfig) {
			t.Errorf("%q: %v", text, err)
		}
	}
}

func TestInconsistentSettingsAreRefused(t *testing.T) {
	for _, c := range []struct {
		opts []Option
		want string
	}{
		{[]Option{WithBufferCapacity(0)}, "buffer capacity"},
		{[]Option{WithBufferCapacity(10), WithLowWater(11)}, "low water"},
		{[]Option{WithMaxAge(time.Millisecond)}, "max age"},
		{[]Option{WithResolveInterval(10 * time.Millisecond)}, "resolve interval"},
		{[]Option{WithMaxInFlight(0)}, "max in flight"},
		{[]Option{WithTimeout(0)}, "above zero"},
		{[]Option{WithToken(strings.Repeat("x", 256))}, "token"},
		{[]Option{WithBackoff(2*time.Second, time.Second)}, "backoff"},
		{[]Option{WithTLSServerName("x")}, "needs TLS"},
		{[]Option{WithTLSCAFile("/nonexistent/ca.pem")}, "CA file"},
	} {
		cfg := defaultConfig()
		for _, o := range c.opts {
			o(&cfg)
		}
		_, err := cfg.validate([]string{"127.0.0.1:1"})
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v", c.want, err)
		}
	}
	cfg := defaultConfig()
	if _, err := cfg.validate(nil); err == nil {
		t.Error("no endpoints accepted")
	}
}

func TestBackoffGrowsExponentiallyWithJitterUpToTheCap(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	initial, max := 100*time.Millisecond, time.Second
	seen := map[time.Duration]bool{}
	for i := 0; i < 200; i++ {
		if d := backoff(rng, initial, max, 0); d < 50*time.Millisecond || d > 100*time.Millisecond {
			t.Fatal("first", d)
		}
		if d := backoff(rng, initial, max, 2); d < 200*time.Millisecond || d > 400*time.Millisecond {
			t.Fatal("third", d)
		}
		d := backoff(rng, initial, max, 1<<30)
		if d < 500*time.Millisecond || d > time.Second {
			t.Fatal("late", d)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Fatal("delays are not jittered")
	}
}
