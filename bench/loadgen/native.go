package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/apache/pulsar-client-go/pulsar"
	plog "github.com/apache/pulsar-client-go/pulsar/log"
	"github.com/sirupsen/logrus"
)

type nativeFlags struct {
	serviceURL string
	topic      string
	token      string
}

func registerNative(fs *flag.FlagSet, n *nativeFlags) {
	fs.StringVar(&n.serviceURL, "service-url", "pulsar://127.0.0.1:6650", "Pulsar service URL")
	fs.StringVar(&n.topic, "topic", "", "topic, e.g. persistent://public/default/bench (required)")
	fs.StringVar(&n.token, "token", "", "JWT for Pulsar token authentication (optional)")
}

func (n *nativeFlags) client() (pulsar.Client, error) {
	if n.topic == "" {
		return nil, fmt.Errorf("-topic is required")
	}
	lr := logrus.New()
	lr.SetOutput(os.Stderr)
	lr.SetLevel(logrus.WarnLevel)
	opts := pulsar.ClientOptions{
		URL:               n.serviceURL,
		OperationTimeout:  30 * time.Second,
		ConnectionTimeout: 10 * time.Second,
		Logger:            plog.NewLoggerWithLogrus(lr),
	}
	if n.token != "" {
		opts.Authentication = pulsar.NewAuthenticationToken(n.token)
	}
	return pulsar.NewClient(opts)
}

func newBenchProducer(client pulsar.Client, topic string, maxPending int) (pulsar.Producer, error) {
	return client.CreateProducer(pulsar.ProducerOptions{
		Topic:                   topic,
		DisableBatching:         false,
		BatchingMaxPublishDelay: time.Millisecond,
		BatchingMaxMessages:     1000,
		MaxPendingMessages:      maxPending,
		SendTimeout:             30 * time.Second,
	})
}

// nativeProducerTarget: one producer, SendAsync; one "worker" keeping max-pending in flight.
type nativeProducerTarget struct {
	producer   pulsar.Producer
	payload    []byte
	maxPending int
}

func (t *nativeProducerTarget) workers() int   { return 1 }
func (t *nativeProducerTarget) capacity() int  { return t.maxPending }
func (t *nativeProducerTarget) blocking() bool { return false }

func (t *nativeProducerTarget) issue(_ int, done func(outcome)) {
	size := int64(len(t.payload))
	t.producer.SendAsync(context.Background(), &pulsar.ProducerMessage{Payload: t.payload},
		func(_ pulsar.MessageID, _ *pulsar.ProducerMessage, err error) {
			if err != nil {
				done(outcome{reqs: 1, errs: 1, err: fmt.Errorf("send: %w", err)})
				return
			}
			done(outcome{msgs: 1, reqs: 1, bytes: size})
		})
}

// producing: a producing subcommand's flags, client and producer, opened alike for
// native-publish and native-fill.
type producing struct {
	c          common
	n          nativeFlags
	maxPending int
	client     pulsar.Client
	producer   pulsar.Producer
}

func openProducing(name string, kind cmdKind, args []string) (*producing, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	p := &producing{}
	registerCommon(fs, &p.c, kind)
	registerNative(fs, &p.n)
	fs.IntVar(&p.maxPending, "max-pending", 0, "messages kept in flight (0 = concurrency*100)")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if err := p.c.validate(); err != nil {
		return nil, err
	}
	if p.maxPending <= 0 {
		p.maxPending = p.c.concurrency * 100
	}
	client, err := p.n.client()
	if err != nil {
		return nil, err
	}
	queue := p.maxPending
	if p.c.rate > 0 && p.c.maxInflight > queue {
		queue = p.c.maxInflight // open loop: scheduled sends must not block on the queue
	}
	producer, err := newBenchProducer(client, p.n.topic, queue)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("create producer: %w", err)
	}
	p.client, p.producer = client, producer
	return p, nil
}

func (p *producing) close() {
	p.producer.Close()
	p.client.Close()
}

func runNativePublish(args []string) (*Result, error) {
	p, err := openProducing("native-publish", kindLoad, args)
	if err != nil {
		return nil, err
	}
	defer p.close()
	t := &nativeProducerTarget{producer: p.producer, payload: randomPayload(p.c.payload), maxPending: p.maxPending}
	return runLoad("native-publish", &p.c, t), nil
}

func runNativeFill(args []string) (*Result, error) {
	p, err := openProducing("native-fill", kindFill, args)
	if err != nil {
		return nil, err
	}
	defer p.close()
	c, n, producer := &p.c, &p.n, p.producer
	payload := randomPayload(c.payload)
	size := int64(len(payload))

	rec := newRecorder(0)
	win := newDrainWindow(c)
	sem := make(chan struct{}, p.maxPending)
	var wg sync.WaitGroup
	var sent int64
	for sent = 0; sent < c.messages && !win.expired(); sent++ {
		sem <- struct{}{}
		wg.Add(1)
		st := time.Now()
		producer.SendAsync(context.Background(), &pulsar.ProducerMessage{Payload: payload},
			func(_ pulsar.MessageID, _ *pulsar.ProducerMessage, err error) {
				end := time.Now()
				o := outcome{msgs: 1, reqs: 1, bytes: size}
				if err != nil {
					o = outcome{reqs: 1, errs: 1, err: fmt.Errorf("send: %w", err)}
				}
				if win.inWindow(st) {
					rec.add(o, end.Sub(st), true, end)
				}
				<-sem
				wg.Done()
			})
	}
	if err := producer.FlushWithCtx(context.Background()); err != nil {
		log.Printf("native-fill: flush: %v", err)
	}
	if !waitTimeout(&wg, 60*time.Second) {
		rec.noteError(errors.New("acks still missing 60s after the last send"), 0)
	}
	log.Printf("native-fill: sent %d messages to %s", sent, n.topic)
	return rec.result("native-fill", win.seconds(rec), true), nil
}

func runNativeConsume(args []string) (*Result, error) {
	fs := flag.NewFlagSet("native-consume", flag.ContinueOnError)
	var c common
	var n nativeFlags
	registerCommon(fs, &c, kindDrain)
	registerNative(fs, &n)
	sub := fs.String("subscription", "loadgen", "subscription name")
	initial := fs.String("initial-position", "earliest", "initial position of a new subscription: earliest|latest")
	queueSize := fs.Int("receiver-queue-size", 1000, "consumer receiver queue size")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	pos := pulsar.SubscriptionPositionEarliest
	if *initial == "latest" {
		pos = pulsar.SubscriptionPositionLatest
	}
	client, err := n.client()
	if err != nil {
		return nil, err
	}
	defer client.Close()
	consumer, err := client.Subscribe(pulsar.ConsumerOptions{
		Topic:                       n.topic,
		SubscriptionName:            *sub,
		Type:                        pulsar.Shared,
		ReceiverQueueSize:           *queueSize,
		SubscriptionInitialPosition: pos,
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	defer consumer.Close()

	rec := newRecorder(c.messages)
	win := newDrainWindow(&c)
	ctx, cancel := deadlineCtx(win)
	defer cancel()
	for !rec.isClosed() {
		msg, err := consumer.Receive(ctx)
		if err != nil {
			if ctx.Err() == nil {
				rec.noteError(fmt.Errorf("receive: %w", err), 1)
			}
			break
		}
		o := outcome{msgs: 1, reqs: 1, bytes: int64(len(msg.Payload()))}
		if err := consumer.Ack(msg); err != nil {
			o = outcome{reqs: 1, errs: 1, err: fmt.Errorf("ack: %w", err)}
		}
		if end := time.Now(); win.inWindow(end) {
			rec.add(o, 0, false, end)
		}
	}
	return rec.result("native-consume", win.seconds(rec), false), nil
}

func runNativeRead(args []string) (*Result, error) {
	fs := flag.NewFlagSet("native-read", flag.ContinueOnError)
	var c common
	var n nativeFlags
	registerCommon(fs, &c, kindDrain)
	registerNative(fs, &n)
	queueSize := fs.Int("receiver-queue-size", 1000, "reader receiver queue size")
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	client, err := n.client()
	if err != nil {
		return nil, err
	}
	defer client.Close()
	reader, err := client.CreateReader(pulsar.ReaderOptions{
		Topic:             n.topic,
		StartMessageID:    pulsar.EarliestMessageID(),
		ReceiverQueueSize: *queueSize,
	})
	if err != nil {
		return nil, fmt.Errorf("create reader: %w", err)
	}
	defer reader.Close()

	rec := newRecorder(c.messages)
	win := newDrainWindow(&c)
	ctx, cancel := deadlineCtx(win)
	defer cancel()
	for !rec.isClosed() {
		msg, err := reader.Next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				rec.noteError(fmt.Errorf("next: %w", err), 1)
			}
			break
		}
		if end := time.Now(); win.inWindow(end) {
			rec.add(outcome{msgs: 1, reqs: 1, bytes: int64(len(msg.Payload()))}, 0, false, end)
		}
	}
	return rec.result("native-read", win.seconds(rec), false), nil
}

func deadlineCtx(win drainWindow) (context.Context, context.CancelFunc) {
	if win.deadline.IsZero() {
		return context.WithCancel(context.Background())
	}
	return context.WithDeadline(context.Background(), win.deadline)
}
