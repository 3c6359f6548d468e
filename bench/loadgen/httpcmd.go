package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

type httpFlags struct {
	url     string
	headers headerList
	token   string
	timeout time.Duration
}

func registerHTTP(fs *flag.FlagSet, h *httpFlags, defURL string) {
	fs.StringVar(&h.url, "url", defURL, "endpoint URL")
	fs.Var(&h.headers, "header", "extra request header \"Name: value\" (repeatable)")
	fs.StringVar(&h.token, "token", "", "shorthand for -header \"Authorization: Bearer TOKEN\"")
	fs.DurationVar(&h.timeout, "timeout", 60*time.Second, "per-request timeout")
}

func (h *httpFlags) apply(req *http.Request) {
	for _, p := range h.headers.pairs() {
		req.Header.Set(p[0], p[1])
	}
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
}

// newHTTPClient returns one shared keep-alive client able to keep `conns` connections idle.
func newHTTPClient(conns int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns + 16,
		MaxIdleConnsPerHost: conns + 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
		WriteBufferSize:     64 << 10,
		ReadBufferSize:      64 << 10,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// do sends one request and returns status and body (fully read, so the connection is reused).
func do(client *http.Client, h *httpFlags, method, u, contentType string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	h.apply(req)
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("reading response: %w", err)
	}
	return resp.StatusCode, b, nil
}

func statusErr(method, u string, status int, body []byte) error {
	s := strings.TrimSpace(string(body))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return fmt.Errorf("%s %s: HTTP %d: %s", method, u, status, s)
}

func is2xx(status int) bool { return status >= 200 && status < 300 }

// withStatus stamps every outcome reported through done with the HTTP status code.
func withStatus(done func(outcome), code string) func(outcome) {
	return func(o outcome) {
		o.status = code
		done(o)
	}
}

// ---------------------------------------------------------------------------------------
// http-publish

type httpPublishTarget struct {
	client      *http.Client
	h           *httpFlags
	mode        string
	body        []byte
	contentType string
	batch       int
	msgBytes    int64
	n           int
}

func (t *httpPublishTarget) workers() int   { return t.n }
func (t *httpPublishTarget) capacity() int  { return 1 }
func (t *httpPublishTarget) blocking() bool { return true }

func (t *httpPublishTarget) issue(_ int, done func(outcome)) {
	status, body, err := do(t.client, t.h, http.MethodPost, t.h.url, t.contentType, t.body)
	code := fmt.Sprintf("%03d", status)
	done = withStatus(done, code)
	if err != nil {
		done(outcome{reqs: 1, errs: 1, err: err})
		return
	}
	if !is2xx(status) {
		done(outcome{reqs: 1, errs: 1, err: statusErr("POST", t.h.url, status, body)})
		return
	}
	switch t.mode {
	case "pulsar-rest":
		var r struct {
			Results []struct {
				ErrorCode int    `json:"errorCode"`
				ErrorMsg  string `json:"errorMsg"`
			} `json:"messagePublishResults"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			done(outcome{reqs: 1, errs: 1, err: fmt.Errorf("pulsar-rest response: %w: %.200s", err, body)})
			return
		}
		o := outcome{reqs: 1}
		for _, res := range r.Results {
			if res.ErrorCode == 0 {
				o.msgs++
			} else {
				o.errs++
				if o.err == nil {
					o.err = fmt.Errorf("pulsar-rest errorCode %d: %s", res.ErrorCode, res.ErrorMsg)
				}
			}
		}
		if len(r.Results) != t.batch {
			o.errs++
			if o.err == nil {
				o.err = fmt.Errorf("pulsar-rest: %d results for %d messages: %.200s", len(r.Results), t.batch, body)
			}
		}
		o.bytes = int64(o.msgs) * t.msgBytes
		done(o)
	default:
		o := outcome{reqs: 1, msgs: t.batch}
		if status == http.StatusMultiStatus {
			var r struct {
				Results []struct {
					Error json.RawMessage `json:"error"`
				} `json:"results"`
			}
			if err := json.Unmarshal(body, &r); err != nil {
				done(outcome{reqs: 1, errs: 1, err: fmt.Errorf("207 response: %w", err)})
				return
			}
			o.msgs = 0
			for _, res := range r.Results {
				if len(res.Error) > 0 && string(res.Error) != "null" {
					o.errs++
					if o.err == nil {
						o.err = fmt.Errorf("POST %s: HTTP 207: %s", t.h.url, res.Error)
					}
				} else {
					o.msgs++
				}
			}
		}
		o.bytes = int64(o.msgs) * t.msgBytes
		done(o)
	}
}

func batchBody(field, b64 string, n int) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"messages":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.WriteString(`{"` + field + `":"` + b64 + `"}`)
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}

// recordBody is a batch of n JSON records carrying the payload as text; they conform to
// bench/run.py's RECORD_SCHEMA.
func recordBody(b64 string, n int) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"messages":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			buf.WriteByte(',')
		}
		fmt.Fprintf(&buf, `{"value":{"id":"order-%d","n":%d,"tags":["a","b"],"payload":"%s"}}`, i, i, b64)
	}
	buf.WriteString(`]}`)
	return buf.Bytes()
}

// parseHTTPCommand parses an HTTP subcommand's flags: the common ones, the HTTP ones
// (-url defaulting to defaultURL) and those `extra` registers.
func parseHTTPCommand(name string, kind cmdKind, defaultURL string, args []string, extra func(*flag.FlagSet)) (*common, *httpFlags, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	var c common
	var h httpFlags
	registerCommon(fs, &c, kind)
	registerHTTP(fs, &h, defaultURL)
	extra(fs)
	if err := parseFlags(fs, args); err != nil {
		return nil, nil, err
	}
	if err := c.validate(); err != nil {
		return nil, nil, err
	}
	return &c, &h, nil
}

func runHTTPPublish(args []string) (*Result, error) {
	var batch *int
	var mode *string
	c, h, err := parseHTTPCommand("http-publish", kindLoad, "http://127.0.0.1:8000/v1/topics/public/default/bench/messages", args,
		func(fs *flag.FlagSet) {
			batch = fs.Int("batch", 1, "messages per request (gateway-json, gateway-record, pulsar-rest)")
			mode = fs.String("mode", "gateway-json", "gateway-json | gateway-record | gateway-raw | pulsar-rest")
		})
	if err != nil {
		return nil, err
	}
	if *batch < 1 {
		return nil, errors.New("-batch must be >= 1")
	}
	payload := randomPayload(c.payload)
	b64 := base64.StdEncoding.EncodeToString(payload)
	t := &httpPublishTarget{h: h, mode: *mode, batch: *batch, msgBytes: int64(len(payload)), n: c.concurrency}
	switch *mode {
	case "gateway-json":
		t.body, t.contentType = batchBody("data", b64, *batch), "application/json"
	case "gateway-record":
		t.body, t.contentType = recordBody(b64, *batch), "application/json"
	case "pulsar-rest":
		t.body, t.contentType = batchBody("payload", b64, *batch), "application/json"
	case "gateway-raw":
		t.batch = 1
		t.body, t.contentType = payload, "application/octet-stream"
	default:
		return nil, fmt.Errorf("unknown -mode %q", *mode)
	}
	conns := c.concurrency
	if c.rate > 0 {
		conns = c.maxInflight
	}
	t.client = newHTTPClient(conns, h.timeout)
	log.Printf("http-publish: mode %s, batch %d, %d-byte payload, request body %d bytes",
		*mode, t.batch, len(payload), len(t.body))
	return runLoad("http-publish/"+*mode, c, t), nil
}

// ---------------------------------------------------------------------------------------
// messages returned by the gateway (Read, Pull, Stream)

type gwMessage struct {
	Receipt string          `json:"receipt"`
	Data    *string         `json:"data"`
	Value   json.RawMessage `json:"value"`
}

// size is the payload size: decoded length of data, or the JSON bytes of value.
func (m *gwMessage) size() int64 {
	if m.Data != nil {
		return int64(base64.StdEncoding.DecodedLen(len(*m.Data)) - strings.Count((*m.Data)[max(0, len(*m.Data)-2):], "="))
	}
	return int64(len(m.Value))
}

func sumSize(msgs []gwMessage) int64 {
	var n int64
	for i := range msgs {
		n += msgs[i].size()
	}
	return n
}

// ---------------------------------------------------------------------------------------
// http-pull

func runHTTPPull(args []string) (*Result, error) {
	var batch, waitMS *int
	c, h, err := parseHTTPCommand("http-pull", kindDrain, "http://127.0.0.1:8000/v1/topics/public/default/bench/subscriptions/s", args,
		func(fs *flag.FlagSet) {
			batch = fs.Int("batch", 10, "max_messages per pull")
			waitMS = fs.Int("wait-ms", 1000, "wait_ms per pull")
		})
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(h.url, "/")
	pullURL, ackURL := base+"/pull", base+"/ack"
	pullBody := []byte(fmt.Sprintf(`{"max_messages":%d,"wait_ms":%d}`, *batch, *waitMS))
	client := newHTTPClient(c.concurrency, h.timeout)

	rec := newRecorder(c.messages)
	win := newDrainWindow(c)
	var wg sync.WaitGroup
	for w := 0; w < c.concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !rec.isClosed() && !win.expired() {
				st := time.Now()
				status, body, err := do(client, h, http.MethodPost, pullURL, "application/json", pullBody)
				if err == nil && !is2xx(status) {
					err = statusErr("POST", pullURL, status, body)
				}
				var pulled struct {
					Messages []gwMessage `json:"messages"`
				}
				if err == nil {
					if jerr := json.Unmarshal(body, &pulled); jerr != nil {
						err = fmt.Errorf("pull response: %w", jerr)
					}
				}
				if err != nil {
					rec.add(outcome{reqs: 1, errs: 1, err: err}, 0, false, time.Now())
					time.Sleep(10 * time.Millisecond) // do not spin on a failing endpoint
					continue
				}
				if len(pulled.Messages) == 0 {
					rec.add(outcome{reqs: 1, noLat: true}, 0, false, time.Time{})
					continue
				}
				receipts := make([]string, len(pulled.Messages))
				for i := range pulled.Messages {
					receipts[i] = pulled.Messages[i].Receipt
				}
				ackBody, _ := json.Marshal(map[string][]string{"receipts": receipts})
				// always ack what was pulled, even when the measurement is over
				status, body, err = do(client, h, http.MethodPost, ackURL, "application/json", ackBody)
				end := time.Now()
				if err == nil && !is2xx(status) {
					err = statusErr("POST", ackURL, status, body)
				}
				var acked struct {
					Succeeded int `json:"succeeded"`
					Failed    []struct {
						Receipt string `json:"receipt"`
						Code    string `json:"code"`
					} `json:"failed"`
				}
				if err == nil {
					if jerr := json.Unmarshal(body, &acked); jerr != nil {
						err = fmt.Errorf("ack response: %w", jerr)
					}
				}
				o := outcome{reqs: 2}
				if err != nil {
					o.errs, o.err = 1, err
				} else {
					o.msgs = acked.Succeeded
					o.bytes = sumSize(pulled.Messages) * int64(acked.Succeeded) / int64(len(pulled.Messages))
					if len(acked.Failed) > 0 {
						o.errs = len(acked.Failed)
						o.err = fmt.Errorf("ack failed for %d receipts, first code %q", len(acked.Failed), acked.Failed[0].Code)
					}
				}
				if win.inWindow(end) {
					rec.add(o, end.Sub(st), true, end)
				}
			}
		}()
	}
	wg.Wait()
	return rec.result("http-pull", win.seconds(rec), true), nil
}

// ---------------------------------------------------------------------------------------
// http-read

func withQuery(u string, kv ...string) (string, error) {
	p, err := url.Parse(u)
	if err != nil {
		return "", err
	}
	q := p.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	p.RawQuery = q.Encode()
	return p.String(), nil
}

func runHTTPRead(args []string) (*Result, error) {
	var limit *int
	var position *string
	c, h, err := parseHTTPCommand("http-read", kindDrain, "http://127.0.0.1:8000/v1/topics/public/default/bench/messages", args,
		func(fs *flag.FlagSet) {
			limit = fs.Int("limit", 1000, "limit per page")
			position = fs.String("position", "earliest", "start position")
		})
	if err != nil {
		return nil, err
	}
	client := newHTTPClient(1, h.timeout)
	rec := newRecorder(c.messages)
	win := newDrainWindow(c)
	pos := *position
	for !rec.isClosed() && !win.expired() {
		kv := []string{"position", pos, "limit", strconv.Itoa(*limit)}
		st := time.Now()
		u, err := withQuery(h.url, kv...)
		if err != nil {
			return nil, err
		}
		status, body, err := do(client, h, http.MethodGet, u, "", nil)
		end := time.Now()
		if err == nil && !is2xx(status) {
			err = statusErr("GET", u, status, body)
		}
		var page struct {
			Messages []gwMessage `json:"messages"`
			Next     string      `json:"next"`
		}
		if err == nil {
			if jerr := json.Unmarshal(body, &page); jerr != nil {
				err = fmt.Errorf("read response: %w", jerr)
			}
		}
		if err != nil {
			rec.add(outcome{reqs: 1, errs: 1, err: err}, 0, false, end)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if page.Next != "" {
			pos = page.Next
		}
		if len(page.Messages) == 0 {
			// end of the topic: count the request, keep polling (it is not a page of data)
			rec.add(outcome{reqs: 1, noLat: true}, 0, false, time.Time{})
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if win.inWindow(end) {
			rec.add(outcome{reqs: 1, msgs: len(page.Messages), bytes: sumSize(page.Messages)}, end.Sub(st), true, end)
		}
	}
	return rec.result("http-read", win.seconds(rec), true), nil
}

// ---------------------------------------------------------------------------------------
// sse-read

func runSSERead(args []string) (*Result, error) {
	c, h, err := parseHTTPCommand("sse-read", kindDrain, "http://127.0.0.1:8000/v1/topics/public/default/bench/stream?position=earliest", args,
		func(*flag.FlagSet) {})
	if err != nil {
		return nil, err
	}
	client := newHTTPClient(1, 0) // a stream: no overall timeout, the context bounds it
	rec := newRecorder(c.messages)
	win := newDrainWindow(c)
	ctx, cancel := deadlineCtx(win)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	h.apply(req)
	resp, err := client.Do(req)
	if err != nil {
		rec.noteError(err, 1)
		return rec.result("sse-read", win.seconds(rec), false), nil
	}
	defer resp.Body.Close()
	if !is2xx(resp.StatusCode) {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1000))
		rec.noteError(statusErr("GET", h.url, resp.StatusCode, b), 1)
		return rec.result("sse-read", win.seconds(rec), false), nil
	}
	rec.add(outcome{reqs: 1}, 0, false, time.Time{})
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	var data []byte
	hasData := false
	for !rec.isClosed() && sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) == 0:
			if hasData {
				end := time.Now()
				var m gwMessage
				o := outcome{msgs: 1}
				if err := json.Unmarshal(data, &m); err != nil {
					o = outcome{errs: 1, err: fmt.Errorf("event data: %w: %.200s", err, data)}
				} else {
					o.bytes = m.size()
				}
				if win.inWindow(end) {
					rec.add(o, 0, false, end)
				}
			}
			data, hasData = data[:0], false
		case line[0] == ':':
			// comment / heartbeat
		case bytes.HasPrefix(line, []byte("data:")):
			v := bytes.TrimPrefix(line[5:], []byte(" "))
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, v...)
			hasData = true
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil && !rec.isClosed() {
		rec.noteError(fmt.Errorf("stream: %w", err), 1)
	}
	cancel()
	return rec.result("sse-read", win.seconds(rec), false), nil
}
