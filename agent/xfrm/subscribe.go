package xfrm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// EventBuffer is the capacity of a subscription's channel. When the
// consumer falls further behind, the reader stops reading, the kernel's
// socket buffer fills, and the kernel drops messages; the reader then sends a
// [Resync].
const EventBuffer = 256

// subscribeRcvBuf is the socket's receive buffer: enough for a burst of a
// few thousand notifications (an SA's is about 400 bytes, 1-2 KiB of
// buffer accounting).
const subscribeRcvBuf = 4 << 20

// Subscribe reports the kernel's changes to SAs and policies in the network
// namespace ns (netns.None(): the caller's) until ctx ends, when the channel
// closes. It joins the XFRM multicast groups for SAs, policies and expiry.
//
// Events arrive in the kernel's order. A [Resync] means some were lost:
// read the SAs and policies again. A [Failed] event ends the channel early.
func Subscribe(ctx context.Context, ns netns.NsHandle) (<-chan Event, error) {
	return subscribe(ctx, ns, subscribeRcvBuf, EventBuffer)
}

func subscribe(ctx context.Context, ns netns.NsHandle, rcvbuf, capacity int) (<-chan Event, error) {
	groups := uint32(1<<(groupSA-1) | 1<<(groupPolicy-1) | 1<<(groupExpire-1))
	c, err := dial(ns, groups, rcvbuf)
	if err != nil {
		return nil, fmt.Errorf("subscribe to xfrm events: %w", err)
	}
	ch := make(chan Event, capacity)
	// Cancelling ctx wakes a blocked read through its deadline.
	stop := context.AfterFunc(ctx, func() { c.f.SetReadDeadline(time.Unix(1, 0)) })
	go func() {
		defer close(ch)
		defer c.close()
		defer stop()
		emit := func(ev Event) bool {
			select {
			case ch <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			b, err := c.recv()
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, unix.ENOBUFS) {
				if !emit(Event{Kind: Resync, Err: fmt.Errorf("xfrm events lost: the socket's receive buffer overran: %w", err)}) {
					return
				}
				continue
			}
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue // a deadline set by a cancellation that raced with this read
				}
				emit(Event{Kind: Failed, Err: fmt.Errorf("receive xfrm events: %w", err)})
				return
			}
			evs, err := parseMessage(b)
			for _, ev := range evs {
				if !emit(ev) {
					return
				}
			}
			if err != nil {
				if !emit(Event{Kind: Resync, Err: fmt.Errorf("xfrm event not understood: %w", err)}) {
					return
				}
			}
		}
	}()
	return ch, nil
}
