// Command loadgen is a load generator for side-by-side benchmarks of the broker gateway,
// Pulsar's own REST and WebSocket APIs, and the native Pulsar protocol.
//
// Every subcommand prints exactly one JSON object on stdout (see Result); logs go to stderr.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"sort"
	"strings"
	"time"
)

type subcommand struct {
	name    string
	summary string
	run     func(args []string) (*Result, error)
}

var subcommands = []subcommand{
	{"native-publish", "publish with a pulsar-client-go producer (batching, SendAsync)", runNativePublish},
	{"http-publish", "publish over HTTP (gateway JSON / gateway raw / Pulsar REST)", runHTTPPublish},
	{"ws-publish", "publish over Pulsar's WebSocket producer API", runWSPublish},
	{"native-consume", "receive and ack M messages with a Shared consumer", runNativeConsume},
	{"http-pull", "pull + ack M messages through the gateway's work-queue API", runHTTPPull},
	{"native-read", "read M messages with a Reader from the earliest message", runNativeRead},
	{"http-read", "page through M messages with the gateway's Read API", runHTTPRead},
	{"sse-read", "read M messages from the gateway's SSE stream", runSSERead},
	{"native-fill", "publish M messages as fast as possible and wait for all acks", runNativeFill},
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: loadgen <subcommand> [flags]\n\nsubcommands:\n")
	for _, s := range subcommands {
		fmt.Fprintf(os.Stderr, "  %-15s %s\n", s.name, s.summary)
	}
	fmt.Fprintf(os.Stderr, "\nrun 'loadgen <subcommand> -h' for its flags\n")
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetOutput(os.Stderr)
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		os.Exit(0)
	}
	for _, s := range subcommands {
		if s.name != name {
			continue
		}
		res, err := s.run(os.Args[2:])
		if err != nil {
			if errors.Is(err, flag.ErrHelp) {
				os.Exit(0)
			}
			log.Printf("%s: %v", name, err)
			os.Exit(1)
		}
		out, err := json.Marshal(res)
		if err != nil {
			log.Printf("encoding result: %v", err)
			os.Exit(1)
		}
		fmt.Println(string(out))
		return
	}
	fmt.Fprintf(os.Stderr, "unknown subcommand %q\n\n", name)
	usage()
	os.Exit(2)
}

// Latency is the latency summary in milliseconds, exact percentiles (nearest rank).
type Latency struct {
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Count int     `json:"count"`
}

// Result is the single JSON object every subcommand prints.
type Result struct {
	Path       string  `json:"path"`
	Messages   int64   `json:"messages"`
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	Seconds    float64 `json:"seconds"`
	MsgsPerS   float64 `json:"msgs_per_s"`
	MBPerS     float64 `json:"mb_per_s"`
	LatencyMS  Latency `json:"latency_ms"`
	FirstError string  `json:"first_error"`
	// Statuses counts HTTP operations by status code ("000": no answer); HTTP commands only.
	Statuses map[string]int64 `json:"statuses,omitempty"`
}

func round(v float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	if v >= 0 {
		return float64(int64(v*p+0.5)) / p
	}
	return -float64(int64(-v*p+0.5)) / p
}

// summarize computes exact nearest-rank percentiles of samples (milliseconds); it sorts samples.
func summarize(samples []float64) Latency {
	n := len(samples)
	if n == 0 {
		return Latency{}
	}
	sort.Float64s(samples)
	pick := func(q float64) float64 {
		// nearest rank: the smallest value with at least q*n samples at or below it
		rank := int(math.Ceil(q*float64(n) - 1e-9))
		if rank < 1 {
			rank = 1
		}
		if rank > n {
			rank = n
		}
		return round(samples[rank-1], 3)
	}
	return Latency{
		P50:   pick(0.50),
		P90:   pick(0.90),
		P99:   pick(0.99),
		P999:  pick(0.999),
		Max:   round(samples[n-1], 3),
		Count: n,
	}
}

// headerList is a repeatable -header "Name: value" flag.
type headerList []string

func (h *headerList) String() string { return strings.Join(*h, ", ") }

func (h *headerList) Set(v string) error {
	name, _, ok := strings.Cut(v, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("header %q: want \"Name: value\"", v)
	}
	*h = append(*h, v)
	return nil
}

func (h headerList) pairs() [][2]string {
	out := make([][2]string, 0, len(h))
	for _, v := range h {
		name, value, _ := strings.Cut(v, ":")
		out = append(out, [2]string{strings.TrimSpace(name), strings.TrimSpace(value)})
	}
	return out
}

// common holds the flags shared by every subcommand.
type common struct {
	duration    time.Duration
	warmup      time.Duration
	payload     int
	concurrency int
	rate        float64
	maxInflight int
	drain       time.Duration
	messages    int64
	kind        cmdKind
}

type cmdKind int

const (
	// kindLoad: a fixed measurement window after a warmup; closed or open loop.
	kindLoad cmdKind = iota
	// kindDrain: runs until -messages M are done (or -duration passes); no warmup by default.
	kindDrain
	// kindFill: like kindDrain but not time bounded by default.
	kindFill
)

func registerCommon(fs *flag.FlagSet, c *common, kind cmdKind) {
	c.kind = kind
	switch kind {
	case kindLoad:
		fs.DurationVar(&c.duration, "duration", 10*time.Second, "measurement window")
		fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "warmup before the measurement window (not measured)")
	case kindDrain, kindFill:
		def := 10 * time.Second
		if kind == kindFill {
			def = 0
		}
		fs.DurationVar(&c.duration, "duration", def,
			"upper bound of the measurement window (stops earlier once -messages are done; 0 = no bound)")
		fs.DurationVar(&c.warmup, "warmup", 0,
			"messages handled during this initial period are not counted (default 0 for -messages driven runs)")
		fs.Int64Var(&c.messages, "messages", 100000, "stop after this many messages")
	}
	fs.IntVar(&c.payload, "payload", 100, "payload size in bytes (random bytes)")
	fs.IntVar(&c.concurrency, "concurrency", 16, "workers / connections")
	fs.Float64Var(&c.rate, "rate", 0, "operations per second; 0 = closed loop (max throughput), > 0 = open loop "+
		"(publish subcommands only)")
	fs.IntVar(&c.maxInflight, "max-inflight", 0,
		"open loop: cap on operations in flight; later scheduled operations wait in an unbounded queue "+
			"and their latency still counts from the scheduled time (0 = max(1024, concurrency*100))")
	fs.DurationVar(&c.drain, "drain", 10*time.Second,
		"after the window, how long to wait for operations still in flight")
}

func (c *common) validate() error {
	if c.concurrency < 1 {
		return fmt.Errorf("-concurrency must be >= 1")
	}
	if c.payload < 0 {
		return fmt.Errorf("-payload must be >= 0")
	}
	if c.rate < 0 {
		return fmt.Errorf("-rate must be >= 0")
	}
	if c.rate > 0 && c.kind != kindLoad {
		return fmt.Errorf("-rate (open loop) is only supported by the publish subcommands")
	}
	if c.maxInflight <= 0 {
		c.maxInflight = c.concurrency * 100
		if c.maxInflight < 1024 {
			c.maxInflight = 1024
		}
	}
	return nil
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return nil
}
