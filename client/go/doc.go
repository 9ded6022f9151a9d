// Package snowlease is the Go client of snowlease, a service that hands out unique,
// time-sortable 64-bit IDs (Snowflake layout) in leased blocks over a small binary protocol
// (protocol.md in the repository; this client speaks version 1).
//
// A Client keeps a local buffer of verified ranges that a background goroutine refills
// ahead of demand, so NextID is a memory operation:
//
//	c, err := snowlease.Dial(ctx, []string{"snowlease-headless.snowlease.svc:7609"})
//	if err != nil { ... }
//	defer c.Close()
//	id, err := c.NextID(ctx)
//
// # Behaviour
//
//   - A name resolves to every address behind it (a headless Service gives every pod) and the
//     client connects to all of them, re-resolving every 30 s, and sooner after a loss.
//   - The refill follows the draw rate: about 50 ms of IDs on hand plus on the way, LEASEs
//     pipelined (at most 16 per connection) to the least-busy servers, ranges older than the
//     max age (1 s) dropped unused.
//   - Every reply is verified before its IDs are used: request id, count at most what was
//     asked, the worker id the server announced, one millisecond per block, and each worker's
//     ranges increasing across reconnects. A violation drops the connection (ErrProtocol).
//   - Lost servers are reconnected with jittered exponential backoff; requests a server did
//     not answer (it died, or drained with GOAWAY) are asked of the others.
//   - A server that stops answering without closing (a silent partition, a stopped process)
//     does not stall callers while another server answers: once its oldest request is
//     LagFloor (10 ms) or LagFactor x its usual reply time overdue, its requests stop counting
//     as IDs on the way and demand moves to the servers that answer.
//   - A token (WithToken) is sent in HELLO; TLS via WithTLS / WithTLSCAFile.
//
// # Using the module from a checkout
//
// The module path is example.invalid/snowlease/client/go (the repository is not published
// under a fetchable path), so point the go tool at a checkout with a replace directive:
//
//	go mod edit -replace=example.invalid/snowlease/client/go=/path/to/snowlease/client/go
//	go get example.invalid/snowlease/client/go
//
// then import it as
//
//	import snowlease "example.invalid/snowlease/client/go"
//
// It needs only the standard library (Go 1.19 or later).
package snowlease
