package xfrm

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// OpKind is what one operation of a batch does.
type OpKind uint8

// The operations a batch carries.
const (
	OpAddState OpKind = iota + 1
	OpDeleteState
	OpAddPolicy
	OpUpdatePolicy
	OpDeletePolicy
)

// Op is one change of a batch: State for the state operations (only Dst,
// SPI and Proto for OpDeleteState), Policy for the policy ones.
type Op struct {
	Kind   OpKind
	State  State
	Policy Policy
}

// String describes the operation without keys.
func (o Op) String() string {
	switch o.Kind {
	case OpAddState:
		return "add SA " + o.State.String()
	case OpDeleteState:
		return fmt.Sprintf("delete SA spi 0x%x to %s", o.State.SPI, o.State.Dst)
	case OpAddPolicy:
		return "add policy " + o.Policy.String()
	case OpUpdatePolicy:
		return "update policy " + o.Policy.String()
	case OpDeletePolicy:
		return "delete policy " + o.Policy.String()
	}
	return fmt.Sprintf("op(%d)", o.Kind)
}

// maxBatchBytes and maxBatchOps bound one datagram of a batch; a longer
// batch is sent in several, each acked whole before the next is sent. The
// acks of one datagram wait together in the socket's receive buffer, where
// each takes about 1 KiB (its skb), so 64 stay well inside the default
// 208 KiB (more would be dropped with ENOBUFS).
const (
	maxBatchBytes = 48 << 10
	maxBatchOps   = 64
)

// encode returns the operation's message type, flags and payload.
func (o *Op) encode() (uint16, uint16, []byte, error) {
	switch o.Kind {
	case OpAddState:
		p, err := encodeSA(&o.State)
		return msgNewSA, unix.NLM_F_ACK | unix.NLM_F_CREATE | unix.NLM_F_EXCL, p, err
	case OpDeleteState:
		if !o.State.Dst.IsValid() {
			return 0, 0, nil, errors.New("no destination")
		}
		return msgDelSA, unix.NLM_F_ACK, encodeUsersaID(o.State.Dst, o.State.SPI, o.State.Proto), nil
	case OpAddPolicy:
		p, err := encodePolicy(&o.Policy)
		return msgNewPolicy, unix.NLM_F_ACK | unix.NLM_F_CREATE | unix.NLM_F_EXCL, p, err
	case OpUpdatePolicy:
		p, err := encodePolicy(&o.Policy)
		return msgUpdPolicy, unix.NLM_F_ACK, p, err
	case OpDeletePolicy:
		if err := o.Policy.Validate(); err != nil {
			return 0, 0, nil, err
		}
		payload := encodeUserpolicyID(&o.Policy)
		if o.Policy.Context != "" {
			c, err := NewSecCtx(o.Policy.Context).MarshalBinary()
			if err != nil {
				return 0, 0, nil, err
			}
			payload = appendAttr(payload, attrSecCtx, c)
		}
		return msgDelPolicy, unix.NLM_F_ACK, payload, nil
	}
	return 0, 0, nil, fmt.Errorf("unknown operation %d", o.Kind)
}

// wrap gives a kernel error of the operation the context and sentinels
// the single-request methods give it.
func (o *Op) wrap(err error) error {
	switch o.Kind {
	case OpAddState:
		s := &o.State
		return fmt.Errorf("add SA spi 0x%x to %s%s: %w", s.SPI, s.Dst, ctxSuffix(s.Context), classify(err, s.Proto, s.Context, algoNames(s)))
	case OpDeleteState:
		return fmt.Errorf("delete SA spi 0x%x to %s: %w", o.State.SPI, o.State.Dst, err)
	case OpAddPolicy, OpUpdatePolicy:
		verb := map[OpKind]string{OpAddPolicy: "add", OpUpdatePolicy: "update"}[o.Kind]
		return fmt.Errorf("%s policy %s: %w", verb, &o.Policy, classify(err, 0, o.Policy.Context, ""))
	}
	return fmt.Errorf("%s: %w", o, err)
}

// Apply carries out ops as one batch: their messages go to the kernel
// together (one sendmsg per maxBatchBytes, not one round trip each), each
// asking for its own ack, and the kernel applies them in order. The kernel
// goes on after a failed operation, so every operation is tried; errs[i]
// is operation i's error (nil when it was done), with the context a
// single request's error would have. err is set when the batch itself
// failed (an operation that cannot be encoded, the socket, no answer in
// time); then the operations without an answer are unknown, and their
// errs entries say so.
func (h *Handle) Apply(ops []Op) (errs []error, err error) {
	errs = make([]error, len(ops))
	if len(ops) == 0 {
		return errs, nil
	}
	type encoded struct {
		typ, flags uint16
		payload    []byte
	}
	enc := make([]encoded, len(ops))
	for i := range ops {
		typ, flags, payload, e := ops[i].encode()
		if e != nil {
			return errs, fmt.Errorf("batch operation %d (%s): %w", i, &ops[i], e)
		}
		enc[i] = encoded{typ, flags, payload}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for start := 0; start < len(ops); {
		end, size := start, 0
		for end < len(ops) && end-start < maxBatchOps && (end == start || size+nlmsgHdrLen+len(enc[end].payload) <= maxBatchBytes) {
			size += nlmsgHdrLen + align4(len(enc[end].payload))
			end++
		}
		msgs := make([]outMsg, 0, end-start)
		for _, e := range enc[start:end] {
			msgs = append(msgs, outMsg{e.typ, e.flags, e.payload})
		}
		answers, berr := h.c.batch(msgs, h.timeout)
		for i, a := range answers {
			if a != nil {
				errs[start+i] = ops[start+i].wrap(a)
			}
		}
		if berr != nil {
			for i := end; i < len(ops); i++ {
				errs[i] = fmt.Errorf("%s: not sent: %w", &ops[i], berr)
			}
			return errs, berr
		}
		start = end
	}
	return errs, nil
}

// outMsg is one request of a batch.
type outMsg struct {
	typ, flags uint16
	payload    []byte
}

// errNoAnswer marks a batch request whose ack did not arrive.
var errNoAnswer = errors.New("no answer")

// batch sends msgs in one datagram and reads an ack for each. It returns
// the kernel's answer to each request (nil for an ack of success);
// requests without an answer when err is set get errNoAnswer.
func (c *conn) batch(msgs []outMsg, timeout time.Duration) ([]error, error) {
	answers := make([]error, len(msgs))
	if timeout > 0 {
		if err := c.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return answers, fmt.Errorf("set netlink deadline: %w", err)
		}
		defer c.f.SetReadDeadline(time.Time{})
	}
	size := 0
	for _, m := range msgs {
		size += nlmsgHdrLen + align4(len(m.payload))
	}
	b := make([]byte, 0, size)
	first := c.seq + 1
	for _, m := range msgs {
		c.seq++
		off := len(b)
		b = append(b, make([]byte, nlmsgHdrLen)...)
		ne.PutUint32(b[off:], uint32(nlmsgHdrLen+len(m.payload)))
		ne.PutUint16(b[off+4:], m.typ)
		ne.PutUint16(b[off+6:], m.flags|unix.NLM_F_REQUEST)
		ne.PutUint32(b[off+8:], c.seq)
		ne.PutUint32(b[off+12:], c.pid)
		b = append(b, m.payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	if err := c.sendto(b); err != nil {
		for i := range answers {
			answers[i] = errNoAnswer
		}
		return answers, fmt.Errorf("send a batch of %d XFRM requests: %w", len(msgs), err)
	}
	got := make([]bool, len(msgs))
	left := len(msgs)
	for left > 0 {
		data, err := c.recv()
		if err != nil {
			for i := range answers {
				if !got[i] {
					answers[i] = errNoAnswer
				}
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return answers, fmt.Errorf("batch of %d XFRM requests: %d without an answer within %v: %w", len(msgs), left, timeout, err)
			}
			return answers, fmt.Errorf("batch of %d XFRM requests: receive: %w", len(msgs), err)
		}
		ms, err := splitMessages(data)
		if err != nil {
			for i := range answers {
				if !got[i] {
					answers[i] = errNoAnswer
				}
			}
			return answers, err
		}
		for _, m := range ms {
			i := int(m.seq - first)
			if m.seq < first || i >= len(msgs) || got[i] || m.typ != unix.NLMSG_ERROR {
				continue // an earlier request's late answer, or not an ack
			}
			got[i] = true
			left--
			answers[i] = parseAck(m)
		}
	}
	return answers, nil
}

// BatchWriter is a handle that can apply a batch (*Handle); callers that
// take plainer kernels test for it.
type BatchWriter interface {
	Apply(ops []Op) ([]error, error)
}

var _ BatchWriter = (*Handle)(nil)
