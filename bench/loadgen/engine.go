package main

import (
	"crypto/rand"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"
)

// outcome is what one operation (an HTTP request, a WebSocket message, a native send, a
// pull+ack cycle, ...) reports when it completes.
type outcome struct {
	msgs  int   // messages successfully handled
	bytes int64 // payload bytes of those messages
	reqs  int   // requests made (HTTP requests, WebSocket messages, sends)
	errs  int   // failed requests, plus failed messages inside partially successful responses
	err   error // the error text behind errs (first one kept)
	noLat bool  // do not record a latency sample (e.g. an empty pull)
	// status is the HTTP status of an HTTP operation ("000" when no answer came); empty
	// for other operations.
	status string
}

// recorder accumulates counters and latency samples; safe for concurrent use.
type recorder struct {
	mu       sync.Mutex
	closed   bool
	limit    int64 // stop counting once msgs reaches limit (0 = none)
	msgs     int64
	bytes    int64
	reqs     int64
	errs     int64
	ops      int64
	firstErr string
	lat      []float64
	statuses map[string]int64
	last     time.Time // completion time of the last counted operation
	reached  chan struct{}
}

func newRecorder(limit int64) *recorder {
	return &recorder{limit: limit, lat: make([]float64, 0, 1<<16), reached: make(chan struct{})}
}

// add counts o; latency is recorded when withLat (and o.noLat is false). Returns false when
// the recorder is closed (the measurement is over).
func (r *recorder) add(o outcome, latency time.Duration, withLat bool, end time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.ops++
	r.msgs += int64(o.msgs)
	r.bytes += o.bytes
	r.reqs += int64(o.reqs)
	r.errs += int64(o.errs)
	if o.status != "" {
		if r.statuses == nil {
			r.statuses = map[string]int64{}
		}
		r.statuses[o.status]++
	}
	if o.err != nil && r.firstErr == "" {
		r.firstErr = o.err.Error()
	}
	if withLat && !o.noLat && o.errs == 0 && o.err == nil {
		r.lat = append(r.lat, float64(latency)/float64(time.Millisecond))
	}
	if end.After(r.last) {
		r.last = end
	}
	if r.limit > 0 && r.msgs >= r.limit {
		r.closed = true
		close(r.reached)
	}
	return true
}

func (r *recorder) noteError(err error, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs += n
	if err != nil && r.firstErr == "" {
		r.firstErr = err.Error()
	}
}

func (r *recorder) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		close(r.reached)
	}
}

func (r *recorder) counted() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msgs
}

func (r *recorder) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// result closes the recorder and builds the printed Result.
func (r *recorder) result(path string, seconds float64, withLatency bool) *Result {
	r.close()
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &Result{
		Path:       path,
		Messages:   r.msgs,
		Requests:   r.reqs,
		Errors:     r.errs,
		Seconds:    round(seconds, 6),
		FirstError: r.firstErr,
		Statuses:   r.statuses,
	}
	if seconds > 0 {
		res.MsgsPerS = round(float64(r.msgs)/seconds, 3)
		res.MBPerS = round(float64(r.bytes)/1e6/seconds, 6)
	}
	if withLatency {
		res.LatencyMS = summarize(r.lat)
	}
	return res
}

// target is a publish-style system under test driven by runLoad.
type target interface {
	// workers is the number of independent slots (connections, HTTP workers, producers).
	workers() int
	// capacity is how many operations one worker keeps in flight in closed loop.
	capacity() int
	// blocking reports whether issue blocks until the operation completes (HTTP). A
	// non-blocking issue returns at once and calls done later from another goroutine.
	blocking() bool
	// issue starts one operation on worker w and calls done exactly once.
	issue(w int, done func(outcome))
}

// runLoad drives t for c.warmup + c.duration, in closed loop (c.rate == 0) or open loop.
//
// Closed loop: every worker keeps capacity() operations in flight; operations completing
// inside the window are counted, latency from the operation's actual start.
//
// Open loop: operation i is scheduled at start + i/rate whatever happened to the others;
// scheduled operations wait in an unbounded queue when max-inflight are in flight. Every
// operation scheduled inside the window is counted when it completes (also during the
// drain), latency from its scheduled time, so a slow system cannot hide its queueing
// (no coordinated omission); the window is stretched to the last completion, so a system
// that falls behind shows a lower throughput than the offered rate.
func runLoad(path string, c *common, t target) *Result {
	if c.rate > 0 {
		return runOpen(path, c, t)
	}
	return runClosed(path, c, t)
}

func runClosed(path string, c *common, t target) *Result {
	rec := newRecorder(0)
	start := time.Now()
	ws := start.Add(c.warmup)
	we := ws.Add(c.duration)
	log.Printf("%s: closed loop, %d workers x %d in flight, warmup %v, window %v",
		path, t.workers(), t.capacity(), c.warmup, c.duration)

	windowEnd := make(chan struct{})
	endTimer := time.AfterFunc(time.Until(we), func() { close(windowEnd) })
	defer endTimer.Stop()
	var inflight sync.WaitGroup
	var workers sync.WaitGroup
	for w := 0; w < t.workers(); w++ {
		workers.Add(1)
		go func(w int) {
			defer workers.Done()
			sem := make(chan struct{}, t.capacity())
			for {
				select {
				case sem <- struct{}{}:
				case <-windowEnd:
					return
				}
				st := time.Now()
				if !st.Before(we) {
					return
				}
				inflight.Add(1)
				t.issue(w, func(o outcome) {
					end := time.Now()
					if !end.Before(ws) && !end.After(we) {
						rec.add(o, end.Sub(st), true, end)
					}
					<-sem
					inflight.Done()
				})
			}
		}(w)
	}
	workers.Wait()
	if !waitTimeout(&inflight, c.drain) {
		log.Printf("%s: operations still in flight %v after the window; ignored", path, c.drain)
	}
	return rec.result(path, we.Sub(ws).Seconds(), true)
}

// schedQueue is an unbounded FIFO of scheduled start times (ns since the run's start).
type schedQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []int64
	head   int
	closed bool
}

func newSchedQueue() *schedQueue {
	q := &schedQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *schedQueue) push(v []int64) {
	q.mu.Lock()
	if q.head > 4096 && q.head > len(q.items)/2 {
		n := copy(q.items, q.items[q.head:])
		q.items = q.items[:n]
		q.head = 0
	}
	q.items = append(q.items, v...)
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *schedQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

func (q *schedQueue) pop() (int64, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.head >= len(q.items) && !q.closed {
		q.cond.Wait()
	}
	if q.head >= len(q.items) {
		return 0, false
	}
	v := q.items[q.head]
	q.head++
	return v, true
}

func runOpen(path string, c *common, t target) *Result {
	rec := newRecorder(0)
	start := time.Now()
	wsOff := c.warmup.Nanoseconds()
	weOff := wsOff + c.duration.Nanoseconds()
	ws := start.Add(c.warmup)
	we := start.Add(time.Duration(weOff))
	interval := float64(time.Second) / c.rate
	log.Printf("%s: open loop at %.1f ops/s over %d workers (max %d in flight), warmup %v, window %v",
		path, c.rate, t.workers(), c.maxInflight, c.warmup, c.duration)

	q := newSchedQueue()
	var scheduledInWindow atomic.Int64
	go func() {
		batch := make([]int64, 0, 256)
		for i := int64(0); ; {
			now := time.Since(start).Nanoseconds()
			batch = batch[:0]
			for {
				s := int64(float64(i) * interval)
				if s >= weOff || s > now {
					break
				}
				if s >= wsOff {
					scheduledInWindow.Add(1)
				}
				batch = append(batch, s)
				i++
			}
			if len(batch) > 0 {
				q.push(batch)
			}
			next := int64(float64(i) * interval)
			if next >= weOff {
				q.close()
				return
			}
			if d := next - time.Since(start).Nanoseconds(); d > 0 {
				time.Sleep(time.Duration(d))
			}
		}
	}()

	stop := make(chan struct{})
	sem := make(chan struct{}, c.maxInflight)
	var windowDone atomic.Int64
	allDone := make(chan struct{})
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		rr := 0
		for {
			s, ok := q.pop()
			if !ok {
				return
			}
			select {
			case sem <- struct{}{}:
			case <-stop:
				return
			}
			inWindow := s >= wsOff
			sched := start.Add(time.Duration(s))
			w := rr % t.workers()
			rr++
			done := func(o outcome) {
				end := time.Now()
				if inWindow {
					if rec.add(o, end.Sub(sched), true, end) {
						if windowDone.Add(1) == scheduledInWindow.Load() && end.After(we) {
							select {
							case allDone <- struct{}{}:
							default:
							}
						}
					}
				}
				<-sem
			}
			if t.blocking() {
				go t.issue(w, done)
			} else {
				t.issue(w, done)
			}
		}
	}()

	// wait for the window to end, then for the window's operations to complete
	time.Sleep(time.Until(we))
	deadline := time.NewTimer(c.drain)
	defer deadline.Stop()
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	timedOut := false
wait:
	for {
		if windowDone.Load() >= scheduledInWindow.Load() && time.Now().After(we) {
			select {
			case <-dispatched:
				break wait
			default:
			}
		}
		select {
		case <-allDone:
		case <-ticker.C:
		case <-deadline.C:
			timedOut = true
			break wait
		}
	}
	close(stop)
	rec.close()
	end := time.Now()
	if !timedOut {
		rec.mu.Lock()
		if rec.last.After(we) {
			end = rec.last
		} else {
			end = we
		}
		rec.mu.Unlock()
	}
	missing := scheduledInWindow.Load() - windowDone.Load()
	if missing > 0 {
		rec.noteError(fmt.Errorf("%d operations scheduled in the window not completed %v after it", missing, c.drain), missing)
	}
	log.Printf("%s: scheduled %d operations in the window", path, scheduledInWindow.Load())
	return rec.result(path, end.Sub(ws).Seconds(), true)
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	ch := make(chan struct{})
	go func() {
		wg.Wait()
		close(ch)
	}()
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func randomPayload(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// drainWindow helps the -messages driven subcommands: measurement starts at start+warmup
// and ends when the recorder reached its limit, or at the last counted completion when
// -duration ran out (so an exhausted backlog does not dilute the rate).
type drainWindow struct {
	start, ws time.Time
	deadline  time.Time // zero = none
}

func newDrainWindow(c *common) drainWindow {
	start := time.Now()
	d := drainWindow{start: start, ws: start.Add(c.warmup)}
	if c.duration > 0 {
		d.deadline = d.ws.Add(c.duration)
	}
	return d
}

func (d drainWindow) inWindow(t time.Time) bool { return !t.Before(d.ws) }

func (d drainWindow) expired() bool {
	return !d.deadline.IsZero() && time.Now().After(d.deadline)
}

func (d drainWindow) seconds(rec *recorder) float64 {
	rec.mu.Lock()
	last := rec.last
	rec.mu.Unlock()
	if last.IsZero() || last.Before(d.ws) {
		return time.Since(d.ws).Seconds()
	}
	return last.Sub(d.ws).Seconds()
}
