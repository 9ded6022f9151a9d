package snowlease_test

import (
	"context"
	"fmt"
	"log"
	"time"

	snowlease "example.invalid/snowlease/client/go"
)

// Dial a headless Service name (every pod behind it), then take IDs. Needs a running
// server, so it is compiled but not run by go test.
func ExampleDial() {
	ctx := context.Background()
	c, err := snowlease.Dial(ctx, []string{"snowlease-headless.snowlease.svc:7609"},
		snowlease.WithMaxAge(500*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	id, err := c.NextID(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(id, c.Decode(id))
}

// Lease a block of consecutive IDs, for a batch insert.
func ExampleClient_Lease() {
	ctx := context.Background()
	c, err := snowlease.Dial(ctx, []string{"127.0.0.1:7609"}, snowlease.WithToken("s3cret"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	block, err := c.Lease(ctx, 1000)
	if err != nil {
		log.Fatal(err)
	}
	for _, id := range block.IDs() {
		_ = id // one row each
	}
}

// Take an ID apart: the layout comes from the servers' WELCOME (Client.Decode); here it is
// the default one, with the first ID of protocol.md's LEASED example.
func ExampleLayout_Decode() {
	p := snowlease.DefaultLayout.Decode(252584342323228672)
	fmt.Println(p.Time.Format(time.RFC3339Nano), p.Worker, p.Sequence)
	fmt.Println(p)
	// Output:
	// 2025-11-28T00:00:00Z 7 0
	// 2025-11-28T00:00:00.000Z worker 7 sequence 0
}
