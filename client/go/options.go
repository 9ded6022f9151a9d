package snowlease

// Client settings: Options fill a config, which Dial validates once (turning endpoint
// strings into targets and a CA file into a *tls.Config); nothing changes after that.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/rand"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Defaults. Each carries the reason for its value; most are the Rust client's.
const (
	// DefaultPort is used when an endpoint names none: the server's default --listen port.
	DefaultPort = 7609
	// DefaultBufferCapacity: 262,144 IDs. One worker issues at most 4,096 IDs per ms
	// (4.096 M/s), so this holds ~64 ms of a whole server's output: enough for the 50 ms
	// refill horizon at the highest rate one server can feed, and no more, because anything
	// beyond that would only age toward the max age and be thrown away.
	DefaultBufferCapacity = 1 << 18
	// DefaultLowWater: 4,096 IDs, one maximal LEASE. An idle client keeps one lease around,
	// so a burst of up to 4,096 IDs after a quiet period is served without a round trip, at a
	// cost to a server of 4,096 IDs per max age (0.1 % of one worker's 4.096 M/s).
	DefaultLowWater = 4096
	// DefaultMaxAge: 1 s. An ID's timestamp is at most a second older than the moment it is
	// handed out, which keeps IDs sortable by creation time to within a second.
	DefaultMaxAge = time.Second
	// MinMaxAge: 10 ms. Expiry runs on a timer of max age / 8 (at least 1 ms); below 10 ms
	// that timer would be coarser than the age it enforces.
	MinMaxAge = 10 * time.Millisecond
	// DefaultMaxInFlight: 16 LEASEs per connection. 16 x 4,096 IDs per round trip at a 1 ms
	// in-cluster RTT is 65 M IDs/s, 16 times what one server can issue, so the cap never
	// limits throughput, while a stalled server holds at most 16 requests.
	DefaultMaxInFlight = 16
	// DefaultConnectTimeout: 2 s for TCP connect, TLS and HELLO/WELCOME. Linux resends a
	// lost SYN after 1 s, so 2 s survives one lost SYN.
	DefaultConnectTimeout = 2 * time.Second
	// DefaultRequestTimeout: 2 s for a LEASE reply before the connection is dropped and
	// replaced. A healthy server answers in microseconds, or within a few ms when demand
	// outruns its clock. Demand leaves a lagging connection long before this (see LagFloor).
	DefaultRequestTimeout = 2 * time.Second
	// DefaultTimeout: 5 s that Dial, NextID and Lease wait for IDs before ErrUnavailable. It
	// covers a failed-over reconnect and one pod restarting, and still reports an outage
	// well before typical 10-30 s upstream deadlines. A context deadline can shorten it.
	DefaultTimeout = 5 * time.Second
	// DefaultBackoffInitial: 50 ms before the first reconnect: a refused connection is not
	// retried in a tight loop, and a server restarting on its port (~100 ms) is back within
	// a couple of attempts.
	DefaultBackoffInitial = 50 * time.Millisecond
	// DefaultBackoffMax: 5 s, the usual Kubernetes readiness probe period. It also paces the
	// early re-resolution after a loss, so a pod back in DNS is used within 5 s.
	DefaultBackoffMax = 5 * time.Second
	// DefaultResolveInterval: 30 s between resolutions of a name while all is well, so a
	// scale-up behind a headless Service is noticed within 30 s for one DNS query per 30 s.
	// After a loss the name is re-resolved sooner, on the backoff schedule.
	DefaultResolveInterval = 30 * time.Second
	// MinResolveInterval: 1 s, so a client cannot turn itself into a load on the DNS.
	MinResolveInterval = time.Second
)

// Issue-16 constants: when a connection's outstanding LEASEs stop counting as IDs on the way.
const (
	// LagFloor: 10 ms. A connection whose oldest outstanding LEASE has gone unanswered this
	// long (or LagFactor times its usual wait for a reply, if longer) is "lagging": its requests no longer
	// count as IDs on the way and it gets no new ones while another connection answers, so
	// demand moves to the servers that answer. Measured mean waits per reply on loopback:
	// 2-4 µs per pipelined reply from a server with spare capacity, 0.46-0.99 ms from one at
	// its 4,096-per-ms ceiling; 10 ms is ten times the slower. It is also below the 25 ms of
	// IDs the buffer holds at its low mark (half the 50 ms horizon), so demand moves before
	// the buffer runs dry: with a silent server beside a healthy one the longest NextID was
	// 8-16 ms in 6 runs (0.5-1 ms without it; 1.3 M IDs/s on a loaded 2-core machine). Misjudging a slow but healthy connection costs only
	// extra IDs asked elsewhere (bounded by the buffer capacity); its replies are still used.
	LagFloor = 10 * time.Millisecond
	// LagFactor: 4 times a connection's usual wait for a reply (a peak decaying by 1/16 per
	// reply), so a server far away is not called lagging for its distance: after a batch of
	// 16 pipelined replies the peak has decayed to 38 % of the round trip, and 4 x 38 % is
	// 1.5 round trips. Beside the floor it matters for round trips above 10 ms.
	LagFactor = 4
	// troubleWindow: 5 min of early re-resolution (on the backoff schedule, at most one query
	// per DefaultBackoffMax) after a connection of a name was lost or lagged, so a pod that
	// comes back within that time under a new or the same address is found within a backoff
	// step. A guess at how long a rescheduled pod takes to return; the cost is at most 60 DNS
	// queries per name per loss.
	troubleWindow = 5 * time.Minute
)

// Resolver looks a host name up; *net.Resolver satisfies it. WithResolver replaces the
// default (net.DefaultResolver), e.g. in tests.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// Option changes one setting of Dial.
type Option func(*config)

// config is every setting; see the With* options for their meaning.
type config struct {
	bufferCapacity  uint64
	lowWater        uint64
	maxAge          time.Duration
	maxInFlight     int
	connectTimeout  time.Duration
	requestTimeout  time.Duration
	timeout         time.Duration
	backoffInitial  time.Duration
	backoffMax      time.Duration
	resolveInterval time.Duration
	token           []byte
	tls             *tls.Config
	tlsCAFile       string
	tlsServerName   string
	resolver        Resolver
	logf            func(format string, args ...interface{})
}

func defaultConfig() config {
	return config{
		bufferCapacity:  DefaultBufferCapacity,
		lowWater:        DefaultLowWater,
		maxAge:          DefaultMaxAge,
		maxInFlight:     DefaultMaxInFlight,
		connectTimeout:  DefaultConnectTimeout,
		requestTimeout:  DefaultRequestTimeout,
		timeout:         DefaultTimeout,
		backoffInitial:  DefaultBackoffInitial,
		backoffMax:      DefaultBackoffMax,
		resolveInterval: DefaultResolveInterval,
		resolver:        net.DefaultResolver,
		logf:            func(string, ...interface{}) {},
	}
}

// WithToken sets the shared secret sent in HELLO (at most 255 bytes), for servers started
// with --token-file.
func WithToken(token string) Option { return func(c *config) { c.token = []byte(token) } }

// WithTLS speaks TLS to every endpoint with this configuration (cloned). If its ServerName
// is empty, each endpoint's host (name or IP) is verified, unless WithTLSServerName is set.
// Client certificates for mutual TLS go into its Certificates.
func WithTLS(cfg *tls.Config) Option { return func(c *config) { c.tls = cfg.Clone() } }

// WithTLSCAFile speaks TLS and trusts only the CA certificates in this PEM file: a service
// like this one usually has a private CA, and the system pool would trust any public
// certificate for the name. Combines with WithTLS (the file replaces its RootCAs).
func WithTLSCAFile(path string) Option { return func(c *config) { c.tlsCAFile = path } }

// WithTLSServerName sets the name servers' certificates must carry, instead of each
// endpoint's host: for endpoints given as IPs, or a certificate issued for a Service name
// while the client dials pod addresses.
func WithTLSServerName(name string) Option { return func(c *config) { c.tlsServerName = name } }

// WithMaxAge drops IDs leased longer ago than d unused, so an ID's timestamp stays close to
// the moment it is handed out. At least MinMaxAge.
func WithMaxAge(d time.Duration) Option { return func(c *config) { c.maxAge = d } }

// WithTimeout sets how long Dial, NextID and Lease wait for IDs before ErrUnavailable; the
// wait restarts whenever IDs arrive. A context deadline can end a call sooner.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithConnectTimeout limits TCP connect, TLS and the HELLO/WELCOME exchange.
func WithConnectTimeout(d time.Duration) Option { return func(c *config) { c.connectTimeout = d } }

// WithRequestTimeout limits a LEASE reply; a connection past it is dropped and replaced.
func WithRequestTimeout(d time.Duration) Option { return func(c *config) { c.requestTimeout = d } }

// WithBackoff sets the reconnect delays: exponential from initial to max, each a uniformly
// random point in [step/2, step] so clients cut off by one restart do not return in step.
func WithBackoff(initial, max time.Duration) Option {
	return func(c *config) { c.backoffInitial, c.backoffMax = initial, max }
}

// WithBufferCapacity caps the IDs held (on hand plus asked for). The refill target follows
// the draw rate (about 50 ms worth) up to this cap.
func WithBufferCapacity(ids uint64) Option { return func(c *config) { c.bufferCapacity = ids } }

// WithLowWater sets the fewest IDs the client keeps on hand, even when idle.
func WithLowWater(ids uint64) Option { return func(c *config) { c.lowWater = ids } }

// WithMaxInFlight caps the LEASE requests outstanding on one connection.
func WithMaxInFlight(n int) Option { return func(c *config) { c.maxInFlight = n } }

// WithResolveInterval sets how often a name is resolved again while its connections are
// healthy (at least MinResolveInterval); after a loss it is re-resolved sooner.
func WithResolveInterval(d time.Duration) Option { return func(c *config) { c.resolveInterval = d } }

// WithResolver replaces the resolver used for endpoint names.
func WithResolver(r Resolver) Option { return func(c *config) { c.resolver = r } }

// WithLogf receives the client's log lines (connections lost and found, violations); by
// default they are dropped. log.Printf fits.
func WithLogf(logf func(format string, args ...interface{})) Option {
	return func(c *config) { c.logf = logf }
}

// target is an endpoint after parsing: a fixed address, or a name to resolve.
type target struct {
	host string // the IP or name, without brackets: what a certificate must carry
	port string
	ip   bool
}

func (t target) addr() string { return net.JoinHostPort(t.host, t.port) }

// validate checks every setting and parses the endpoints, naming what is wrong.
func (c *config) validate(endpoints []string) ([]target, error) {
	switch {
	case len(endpoints) == 0:
		return nil, configError("at least one endpoint is required")
	case c.bufferCapacity == 0:
		return nil, configError("buffer capacity must be at least 1")
	case c.lowWater > c.bufferCapacity:
		return nil, configError("low water (%d) must not exceed the buffer capacity (%d)", c.lowWater, c.bufferCapacity)
	case c.maxAge < MinMaxAge:
		return nil, configError("max age must be at least %v, got %v", MinMaxAge, c.maxAge)
	case c.resolveInterval < MinResolveInterval:
		return nil, configError("resolve interval must be at least %v, got %v", MinResolveInterval, c.resolveInterval)
	case c.maxInFlight < 1:
		return nil, configError("max in flight must be at least 1")
	case c.connectTimeout <= 0 || c.requestTimeout <= 0 || c.timeout <= 0 || c.backoffInitial <= 0:
		return nil, configError("timeouts and the initial backoff must be above zero")
	case c.backoffMax < c.backoffInitial:
		return nil, configError("the backoff maximum must not be below its initial value")
	case len(c.token) > maxTokenLen:
		return nil, configError("token is %d bytes, the limit is %d", len(c.token), maxTokenLen)
	case c.resolver == nil || c.logf == nil:
		return nil, configError("resolver and logf must not be nil")
	case c.tlsServerName != "" && c.tls == nil && c.tlsCAFile == "":
		return nil, configError("a TLS server name needs TLS (WithTLS or WithTLSCAFile)")
	}
	targets := make([]target, 0, len(endpoints))
	for _, e := range endpoints {
		t, err := parseEndpoint(e)
		if err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	return targets, c.loadTLS()
}

// parseEndpoint accepts host:port, ip:port, [ipv6]:port, or a bare host or IP (port 7609).
func parseEndpoint(text string) (target, error) {
	s := strings.TrimSpace(text)
	bad := func(why string) (target, error) { return target{}, configError("endpoint %q: %s", text, why) }
	if s == "" {
		return bad("is empty")
	}
	bare := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if ip := net.ParseIP(bare); ip != nil {
		return target{host: bare, port: strconv.Itoa(DefaultPort), ip: true}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if strings.Contains(s, ":") {
			return bad("is not a valid address (write IPv6 as [addr]:port)")
		}
		host, port = s, strconv.Itoa(DefaultPort)
	}
	if host == "" {
		return bad("has no host")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return bad("port must be a number from 1 to 65535")
	}
	return target{host: host, port: port, ip: net.ParseIP(host) != nil}, nil
}

// loadTLS reads the CA file once, so a bad file is a configuration error at Dial, not a
// failure per reconnect.
func (c *config) loadTLS() error {
	if c.tlsCAFile == "" {
		return nil
	}
	pem, err := os.ReadFile(c.tlsCAFile)
	if err != nil {
		return configError("TLS CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return configError("TLS CA file %s holds no usable CERTIFICATE block", c.tlsCAFile)
	}
	if c.tls == nil {
		c.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	c.tls.RootCAs = pool
	return nil
}

// tlsFor is the TLS configuration for an endpoint whose host is host.
func (c *config) tlsFor(host string) *tls.Config {
	if c.tls == nil {
		return nil
	}
	cfg := c.tls.Clone()
	if c.tlsServerName != "" {
		cfg.ServerName = c.tlsServerName
	} else if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	return cfg
}

// backoff returns the delay before retry number attempt (0 for the first): the exponential
// step, then a uniformly random point in [step/2, step] ("equal jitter": never zero, so a
// dead server is not hammered, yet spread over half the window).
func backoff(rng *rand.Rand, initial, max time.Duration, attempt int) time.Duration {
	step := initial
	for i := 0; i < attempt && step < max; i++ {
		step *= 2
	}
	if step > max {
		step = max
	}
	half := step / 2
	return half + time.Duration(rng.Int63n(int64(step-half)+1))
}
