package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// wsConn is one Pulsar WebSocket producer connection; sends are pipelined and matched to
// acks by their context.
type wsConn struct {
	conn    *websocket.Conn
	mu      sync.Mutex
	pending map[string]func(outcome)
	next    uint64
	dead    error
}

func (c *wsConn) readLoop(size int64) {
	for {
		_, b, err := c.conn.Read(context.Background())
		if err != nil {
			c.fail(fmt.Errorf("websocket read: %w", err))
			return
		}
		var ack struct {
			Result    string `json:"result"`
			MessageID string `json:"messageId"`
			Context   string `json:"context"`
			ErrorMsg  string `json:"errorMsg"`
		}
		if err := json.Unmarshal(b, &ack); err != nil {
			log.Printf("ws-publish: unparsable frame %.200q: %v", b, err)
			continue
		}
		c.mu.Lock()
		done, ok := c.pending[ack.Context]
		delete(c.pending, ack.Context)
		c.mu.Unlock()
		if !ok {
			log.Printf("ws-publish: ack for unknown context: %.200s", b)
			continue
		}
		if ack.Result != "ok" {
			done(outcome{reqs: 1, errs: 1, err: fmt.Errorf("websocket ack %q: %s", ack.Result, ack.ErrorMsg)})
			continue
		}
		done(outcome{reqs: 1, msgs: 1, bytes: size})
	}
}

// fail completes every pending send with err and marks the connection dead.
func (c *wsConn) fail(err error) {
	c.mu.Lock()
	if c.dead == nil {
		c.dead = err
	}
	pending := c.pending
	c.pending = map[string]func(outcome){}
	c.mu.Unlock()
	for _, done := range pending {
		done(outcome{reqs: 1, errs: 1, err: err})
	}
}

type wsTarget struct {
	conns    []*wsConn
	prefix   []byte // {"payload":"<b64>","context":"
	size     int64
	inflight int
}

func (t *wsTarget) workers() int   { return len(t.conns) }
func (t *wsTarget) capacity() int  { return t.inflight }
func (t *wsTarget) blocking() bool { return false }

func (t *wsTarget) issue(w int, done func(outcome)) {
	c := t.conns[w]
	c.mu.Lock()
	if c.dead != nil {
		err := c.dead
		c.mu.Unlock()
		done(outcome{reqs: 1, errs: 1, err: err})
		return
	}
	c.next++
	id := strconv.FormatUint(c.next, 10)
	c.pending[id] = done
	c.mu.Unlock()

	msg := make([]byte, 0, len(t.prefix)+len(id)+2)
	msg = append(msg, t.prefix...)
	msg = append(msg, id...)
	msg = append(msg, '"', '}')
	if err := c.conn.Write(context.Background(), websocket.MessageText, msg); err != nil {
		c.mu.Lock()
		d, ok := c.pending[id]
		delete(c.pending, id)
		c.mu.Unlock()
		if ok {
			d(outcome{reqs: 1, errs: 1, err: fmt.Errorf("websocket write: %w", err)})
		}
	}
}

func runWSPublish(args []string) (*Result, error) {
	fs := flag.NewFlagSet("ws-publish", flag.ContinueOnError)
	var c common
	registerCommon(fs, &c, kindLoad)
	u := fs.String("url", "ws://127.0.0.1:8080/ws/v2/producer/persistent/public/default/bench",
		"Pulsar WebSocket producer URL")
	token := fs.String("token", "", "JWT, sent as Authorization: Bearer")
	var headers headerList
	fs.Var(&headers, "header", "extra handshake header \"Name: value\" (repeatable)")
	inflight := fs.Int("inflight", 1, "closed loop: messages in flight per connection")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if *inflight < 1 {
		return nil, errors.New("-inflight must be >= 1")
	}
	payload := randomPayload(c.payload)
	t := &wsTarget{
		prefix:   []byte(`{"payload":"` + base64.StdEncoding.EncodeToString(payload) + `","context":"`),
		size:     int64(len(payload)),
		inflight: *inflight,
	}
	hdr := http.Header{}
	for _, p := range headers.pairs() {
		hdr.Set(p[0], p[1])
	}
	if *token != "" {
		hdr.Set("Authorization", "Bearer "+*token)
	}
	for i := 0; i < c.concurrency; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		conn, resp, err := websocket.Dial(ctx, *u, &websocket.DialOptions{HTTPHeader: hdr})
		cancel()
		if err != nil {
			if resp != nil {
				err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
			}
			for _, wc := range t.conns {
				_ = wc.conn.CloseNow()
			}
			return nil, fmt.Errorf("dial %s: %w", *u, err)
		}
		conn.SetReadLimit(16 << 20)
		wc := &wsConn{conn: conn, pending: map[string]func(outcome){}}
		t.conns = append(t.conns, wc)
		go wc.readLoop(t.size)
	}
	res := runLoad("ws-publish", &c, t)
	for _, wc := range t.conns {
		_ = wc.conn.Close(websocket.StatusNormalClosure, "")
	}
	return res, nil
}
