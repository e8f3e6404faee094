package bpf

import (
	"errors"
	"fmt"
	"io"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attachment is the pair of vif programs attached to one interface.
type Attachment struct {
	Ifindex int
	Mode    string // "tcx" or "clsact"
	closers []io.Closer
}

// Close detaches both programs.
func (a *Attachment) Close() error {
	var errs []error
	for _, c := range a.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// Attach puts ingress on the interface's ingress hook (packets from the
// guest) and egress on its egress hook (packets toward the guest), with tcx
// where the kernel has it (6.6+) and a clsact qdisc with direct-action
// filters otherwise.
func Attach(ifindex int, ingress, egress *ebpf.Program) (*Attachment, error) {
	a := &Attachment{Ifindex: ifindex, Mode: "tcx"}
	for _, h := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{{ingress, ebpf.AttachTCXIngress}, {egress, ebpf.AttachTCXEgress}} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog, Attach: h.at})
		if errors.Is(err, ebpf.ErrNotSupported) && len(a.closers) == 0 {
			return attachClsact(ifindex, ingress, egress)
		}
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("attach tcx to ifindex %d: %w", ifindex, err)
		}
		a.closers = append(a.closers, l)
	}
	return a, nil
}

type closeFunc func() error

func (f closeFunc) Close() error { return f() }

func attachClsact(ifindex int, ingress, egress *ebpf.Program) (*Attachment, error) {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return nil, fmt.Errorf("add clsact qdisc to ifindex %d: %w", ifindex, err)
	}
	a := &Attachment{Ifindex: ifindex, Mode: "clsact"}
	for _, h := range []struct {
		prog   *ebpf.Program
		parent uint32
		name   string
	}{{ingress, netlink.HANDLE_MIN_INGRESS, "mlsgate_ingress"}, {egress, netlink.HANDLE_MIN_EGRESS, "mlsgate_egress"}} {
		f := &netlink.BpfFilter{
			FilterAttrs:  netlink.FilterAttrs{LinkIndex: ifindex, Parent: h.parent, Handle: 1, Protocol: unix.ETH_P_ALL, Priority: 1},
			Fd:           h.prog.FD(),
			Name:         h.name,
			DirectAction: true,
		}
		if err := netlink.FilterReplace(f); err != nil {
			a.Close()
			return nil, fmt.Errorf("add %s filter to ifindex %d: %w", h.name, ifindex, err)
		}
		a.closers = append(a.closers, closeFunc(func() error { return netlink.FilterDel(f) }))
	}
	return a, nil
}
