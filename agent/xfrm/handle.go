package xfrm

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	goselinux "github.com/opencontainers/selinux/go-selinux"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultTimeout bounds each request of a [Handle] unless
// [Handle.SetTimeout] says otherwise.
const DefaultTimeout = 5 * time.Second

// dumpRetries is how often a dump the kernel marks inconsistent is re-read.
const dumpRetries = 3

// Handle is a NETLINK_XFRM socket for requests. It is safe for concurrent
// use; requests are serialised.
type Handle struct {
	mu      sync.Mutex
	c       *conn
	timeout time.Duration
}

// NewHandle opens a handle in the calling thread's network namespace.
func NewHandle() (*Handle, error) { return NewHandleAt(netns.None()) }

// NewHandleAt opens a handle in the network namespace ns; netns.None()
// means the calling thread's.
func NewHandleAt(ns netns.NsHandle) (*Handle, error) {
	c, err := dial(ns, 0, 0)
	if err != nil {
		return nil, err
	}
	return &Handle{c: c, timeout: DefaultTimeout}, nil
}

// SetTimeout sets how long each request waits for the kernel; 0 waits
// without limit.
func (h *Handle) SetTimeout(d time.Duration) {
	h.mu.Lock()
	h.timeout = d
	h.mu.Unlock()
}

// Close closes the socket.
func (h *Handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.c.close()
}

func (h *Handle) do(typ, flags uint16, payload []byte, fn func(message) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.c.request(typ, flags, payload, h.timeout, fn)
}

// dump reads a whole table; reset clears what fn gathered before a retry.
func (h *Handle) dump(typ uint16, reset func(), fn func(message) error) error {
	var err error
	for range dumpRetries {
		reset()
		err = h.do(typ, unix.NLM_F_DUMP, nil, fn)
		if !errors.Is(err, errDumpInterrupted) {
			return err
		}
	}
	return err
}

// AddState adds an SA; it fails with EEXIST if one with the same
// destination, SPI and protocol exists.
func (h *Handle) AddState(s State) error {
	return h.writeState(msgNewSA, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, "add", &s)
}

// UpdateState replaces the SA with s's destination, SPI and protocol. The
// kernel refuses to change some fields of a live SA.
func (h *Handle) UpdateState(s State) error {
	return h.writeState(msgUpdSA, unix.NLM_F_ACK, "update", &s)
}

func (h *Handle) writeState(typ, flags uint16, verb string, s *State) error {
	payload, err := encodeSA(s)
	if err != nil {
		return fmt.Errorf("%s SA: %w", verb, err)
	}
	err = h.do(typ, flags, payload, nil)
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s SA spi 0x%x to %s%s: %w", verb, s.SPI, s.Dst, ctxSuffix(s.Context), classify(err, s.Proto, s.Context, algoNames(s)))
}

func ctxSuffix(ctx string) string {
	if ctx == "" {
		return ""
	}
	return fmt.Sprintf(" ctx %q", ctx)
}

// algoNames lists an SA's algorithms for an error message.
func algoNames(s *State) string {
	var names []string
	for _, a := range []*Algo{s.AEAD, s.Auth, s.Crypt} {
		if a != nil {
			names = append(names, a.Name)
		}
	}
	return strings.Join(names, " or ")
}

// classify adds the package's sentinels to a kernel error whose meaning is
// certain.
func classify(err error, proto Proto, ctx, algos string) error {
	var ke *kernelError
	if !errors.As(err, &ke) {
		return err
	}
	switch {
	case ke.errno == unix.EPROTONOSUPPORT && proto == ProtoESP:
		return fmt.Errorf("%w: %w", ErrNoESP, err)
	case ke.errno == unix.ENOSYS:
		return fmt.Errorf("%w %s: %w", ErrNoAlgorithm, algos, err)
	case ke.errno == unix.EINVAL && ctx != "" && ke.msg == "" && selinuxRejects(ctx):
		return fmt.Errorf("%w: %w", ErrInvalidContext, err)
	}
	return err
}

// selinuxRejects asks SELinux whether ctx is invalid, through
// github.com/opencontainers/selinux's context check (a write to selinuxfs's
// context file): it fails with EINVAL exactly when security_context_to_sid,
// the kernel's check for SAs and policies, does. Without SELinux it says no.
func selinuxRejects(ctx string) bool {
	if !goselinux.GetEnabled() {
		return false
	}
	return errors.Is(goselinux.SecurityCheckContext(ctx), unix.EINVAL)
}

// DeleteState deletes the SA with destination dst, SPI spi and protocol
// proto.
func (h *Handle) DeleteState(dst netip.Addr, spi uint32, proto Proto) error {
	if !dst.IsValid() {
		return fmt.Errorf("delete SA spi 0x%x: no destination", spi)
	}
	if err := h.do(msgDelSA, unix.NLM_F_ACK, encodeUsersaID(dst, spi, proto), nil); err != nil {
		return fmt.Errorf("delete SA spi 0x%x to %s: %w", spi, dst, err)
	}
	return nil
}

// GetState reads one SA by destination, SPI and protocol.
func (h *Handle) GetState(dst netip.Addr, spi uint32, proto Proto) (State, error) {
	if !dst.IsValid() {
		return State{}, fmt.Errorf("get SA spi 0x%x: no destination", spi)
	}
	var out []State
	err := h.do(msgGetSA, unix.NLM_F_ACK, encodeUsersaID(dst, spi, proto), collectStates(&out))
	if err == nil && len(out) != 1 {
		err = fmt.Errorf("kernel answered with %d SAs", len(out))
	}
	if err != nil {
		return State{}, fmt.Errorf("get SA spi 0x%x to %s: %w", spi, dst, err)
	}
	return out[0], nil
}

func collectStates(out *[]State) func(message) error {
	return func(m message) error {
		if m.typ != msgNewSA {
			return nil
		}
		s, err := decoder{typ: m.typ, base: nlmsgHdrLen}.decodeSA(m.data)
		if err != nil {
			return err
		}
		*out = append(*out, s)
		return nil
	}
}

// States reads every SA.
func (h *Handle) States() ([]State, error) {
	var out []State
	err := h.dump(msgGetSA, func() { out = out[:0] }, collectStates(&out))
	if err != nil {
		return nil, fmt.Errorf("list SAs: %w", err)
	}
	return out, nil
}

// DeleteStatesByReqid deletes every SA of the given reqid and returns how
// many it deleted. The kernel has no such request: it reads the SAs and
// deletes the matches one by one.
func (h *Handle) DeleteStatesByReqid(reqid uint32) (int, error) {
	states, err := h.States()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range states {
		if s.Reqid != reqid {
			continue
		}
		err := h.DeleteState(s.Dst, s.SPI, s.Proto)
		if errors.Is(err, unix.ESRCH) {
			continue // gone meanwhile
		}
		if err != nil {
			return n, fmt.Errorf("delete SAs of reqid %d: %w", reqid, err)
		}
		n++
	}
	return n, nil
}

// FlushStates deletes every SA of protocol proto; 0 means every SA.
func (h *Handle) FlushStates(proto Proto) error {
	if err := h.do(msgFlushSA, unix.NLM_F_ACK, []byte{uint8(proto), 0, 0, 0}, nil); err != nil {
		return fmt.Errorf("flush SAs: %w", err)
	}
	return nil
}

// AddPolicy adds a policy; it fails with EEXIST if one with the same
// selector, direction and context exists.
func (h *Handle) AddPolicy(p Policy) error {
	return h.writePolicy(msgNewPolicy, unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL, "add", &p)
}

// UpdatePolicy adds a policy or replaces the one with the same selector,
// direction and context.
func (h *Handle) UpdatePolicy(p Policy) error {
	return h.writePolicy(msgUpdPolicy, unix.NLM_F_ACK, "update", &p)
}

func (h *Handle) writePolicy(typ, flags uint16, verb string, p *Policy) error {
	payload, err := encodePolicy(p)
	if err != nil {
		return fmt.Errorf("%s policy: %w", verb, err)
	}
	if err := h.do(typ, flags, payload, nil); err != nil {
		return fmt.Errorf("%s policy %s: %w", verb, p, classify(err, 0, p.Context, ""))
	}
	return nil
}

// DeletePolicy deletes the policy with p's selector, direction and context;
// the other fields of p are not compared.
func (h *Handle) DeletePolicy(p Policy) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("delete policy: %w", err)
	}
	payload := encodeUserpolicyID(&p)
	if p.Context != "" {
		c, err := NewSecCtx(p.Context).MarshalBinary()
		if err != nil {
			return fmt.Errorf("delete policy %s: %w", p, err)
		}
		payload = appendAttr(payload, attrSecCtx, c)
	}
	if err := h.do(msgDelPolicy, unix.NLM_F_ACK, payload, nil); err != nil {
		return fmt.Errorf("delete policy %s: %w", p, err)
	}
	return nil
}

// Policies reads every policy of the main policy type; sub-policies and
// per-socket policies are left out.
func (h *Handle) Policies() ([]Policy, error) {
	var out []Policy
	err := h.dump(msgGetPolicy, func() { out = out[:0] }, func(m message) error {
		if m.typ != msgNewPolicy {
			return nil
		}
		p, ptype, err := decoder{typ: m.typ, base: nlmsgHdrLen}.decodePolicy(m.data)
		if err != nil {
			return err
		}
		if ptype == policyTypeMain && p.Dir <= DirFwd {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	return out, nil
}

// FlushPolicies deletes every policy of the main type.
func (h *Handle) FlushPolicies() error {
	if err := h.do(msgFlushPolicy, unix.NLM_F_ACK, nil, nil); err != nil {
		return fmt.Errorf("flush policies: %w", err)
	}
	return nil
}
