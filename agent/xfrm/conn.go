package xfrm

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// recvBufLen is the read buffer of a socket. The kernel caps a dump's
// messages at 32 KiB per read and sends notifications one by one, so a read
// never needs more; a longer one is reported rather than cut.
const recvBufLen = 64 << 10

// conn is a NETLINK_XFRM socket, non-blocking under Go's poller so that
// reads honour deadlines.
type conn struct {
	f   *os.File
	rc  syscall.RawConn
	pid uint32
	seq uint32
	buf []byte
}

// dial opens a NETLINK_XFRM socket in ns (the caller's namespace when ns is
// not open) joined to the multicast groups in the groups bit mask.
func dial(ns netns.NsHandle, groups uint32, rcvbuf int) (*conn, error) {
	var fd int
	var err error
	if ns.IsOpen() {
		fd, err = socketAt(ns)
	} else {
		fd, err = socket()
	}
	if err != nil {
		return nil, err
	}
	if err := setup(fd, groups, rcvbuf); err != nil {
		unix.Close(fd)
		return nil, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("xfrm netlink socket address: %w", err)
	}
	nsa, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		unix.Close(fd)
		return nil, fmt.Errorf("xfrm netlink socket address: got %T", sa)
	}
	f := os.NewFile(uintptr(fd), "netlink-xfrm")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("xfrm netlink socket: %w", err)
	}
	return &conn{f: f, rc: rc, pid: nsa.Pid, buf: make([]byte, recvBufLen)}, nil
}

func socket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_XFRM)
	if err != nil {
		return -1, fmt.Errorf("open xfrm netlink socket: %w", err)
	}
	return fd, nil
}

// socketAt opens the socket inside ns. It switches a dedicated, locked
// thread into ns and back; if it cannot switch back, the thread stays
// locked and the runtime discards it when the goroutine ends, so no other
// goroutine ever runs in the wrong namespace.
func socketAt(ns netns.NsHandle) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			ch <- result{-1, fmt.Errorf("enter network namespace %s: %w", ns, err)}
			return
		}
		fd, err := socket()
		if rerr := netns.Set(orig); rerr != nil {
			// Leave the thread locked: it dies with this goroutine.
			if err == nil {
				unix.Close(fd)
			}
			ch <- result{-1, fmt.Errorf("return from network namespace %s: %w", ns, rerr)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

func setup(fd int, groups uint32, rcvbuf int) error {
	// Extended acks carry the kernel's reason ("Requested type not
	// found"); capped acks leave out the echoed request.
	for _, opt := range []int{unix.NETLINK_EXT_ACK, unix.NETLINK_CAP_ACK} {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, opt, 1); err != nil && !errors.Is(err, unix.ENOPROTOOPT) {
			return fmt.Errorf("xfrm netlink socket option %d: %w", opt, err)
		}
	}
	if rcvbuf > 0 {
		// SO_RCVBUFFORCE passes the rmem_max limit with CAP_NET_ADMIN,
		// which XFRM needs anyway; SO_RCVBUF is the fallback.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
				return fmt.Errorf("xfrm netlink receive buffer: %w", err)
			}
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		return fmt.Errorf("bind xfrm netlink socket (groups 0x%x): %w", groups, err)
	}
	return nil
}

func (c *conn) close() error { return c.f.Close() }

func (c *conn) send(typ, flags uint16, payload []byte) (uint32, error) {
	c.seq++
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+len(payload))
	ne.PutUint32(b[0:], uint32(nlmsgHdrLen+len(payload)))
	ne.PutUint16(b[4:], typ)
	ne.PutUint16(b[6:], flags|unix.NLM_F_REQUEST)
	ne.PutUint32(b[8:], c.seq)
	ne.PutUint32(b[12:], c.pid)
	b = append(b, payload...)
	if err := c.sendto(b); err != nil {
		return 0, fmt.Errorf("send %s: %w", msgName(typ), err)
	}
	return c.seq, nil
}

// sendto writes the datagram b to the kernel, waiting while the socket's
// send buffer is full.
func (c *conn) sendto(b []byte) error {
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	return err
}

// recv reads one datagram. It returns the bytes, valid until the next read.
func (c *conn) recv() ([]byte, error) {
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), c.buf, unix.MSG_TRUNC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, err
	}
	if n > len(c.buf) {
		return nil, fmt.Errorf("xfrm netlink datagram of %d bytes exceeds the %d-byte buffer", n, len(c.buf))
	}
	return c.buf[:n], nil
}

// kernelError is an error the kernel answered with: the errno and the
// extended ack's message, if any.
type kernelError struct {
	errno unix.Errno
	msg   string
}

func (e *kernelError) Error() string {
	if e.msg == "" {
		return e.errno.Error()
	}
	return fmt.Sprintf("%s (kernel: %s)", e.errno.Error(), e.msg)
}

func (e *kernelError) Unwrap() error { return e.errno }

// parseAck reads an NLMSG_ERROR or NLMSG_DONE payload: nil for an ack, or
// the kernel's error.
func parseAck(m message) error {
	if len(m.data) < 4 {
		if m.typ == unix.NLMSG_DONE {
			return nil // some kernels send an empty DONE
		}
		return &ParseError{Type: m.typ, Offset: nlmsgHdrLen, Reason: "no error code"}
	}
	code := int32(ne.Uint32(m.data))
	if code == 0 {
		return nil
	}
	ke := &kernelError{errno: unix.Errno(-code)}
	if m.typ != unix.NLMSG_ERROR || m.flags&unix.NLM_F_ACK_TLVS == 0 {
		return ke
	}
	// struct nlmsgerr: the error, the request's header and, unless the
	// ack is capped, the request's payload; then the TLVs.
	off := 4 + nlmsgHdrLen
	if m.flags&unix.NLM_F_CAPPED == 0 && len(m.data) >= 4+4 {
		off = 4 + align4(int(ne.Uint32(m.data[4:])))
	}
	if off > len(m.data) {
		return ke
	}
	attrs, err := decoder{typ: m.typ, base: nlmsgHdrLen + off}.parseAttrs(m.data[off:])
	if err != nil {
		return ke
	}
	for _, a := range attrs {
		if a.typ == unix.NLMSGERR_ATTR_MSG {
			ke.msg = strings.TrimRight(string(a.data), "\x00\n")
		}
	}
	return ke
}

// errDumpInterrupted is a dump the kernel marked inconsistent
// (NLM_F_DUMP_INTR): the table changed while it was read.
var errDumpInterrupted = errors.New("dump interrupted by a concurrent change")

// request sends one request and reads until its ack (or, for a dump, its
// NLMSG_DONE), handing every data message to fn. Replies to earlier,
// timed-out requests are skipped by sequence number.
func (c *conn) request(typ, flags uint16, payload []byte, timeout time.Duration, fn func(message) error) error {
	if timeout > 0 {
		if err := c.f.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return fmt.Errorf("set netlink deadline: %w", err)
		}
		defer c.f.SetReadDeadline(time.Time{})
	}
	seq, err := c.send(typ, flags, payload)
	if err != nil {
		return err
	}
	dump := flags&unix.NLM_F_DUMP == unix.NLM_F_DUMP
	intr := false
	for {
		b, err := c.recv()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("%s: no answer within %v: %w", msgName(typ), timeout, err)
			}
			return fmt.Errorf("%s: receive: %w", msgName(typ), err)
		}
		msgs, err := splitMessages(b)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.seq != seq {
				continue
			}
			if m.flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if err := parseAck(m); err != nil {
					return err
				}
				if !dump {
					return nil
				}
			case unix.NLMSG_DONE:
				if err := parseAck(m); err != nil {
					return err
				}
				if intr {
					return errDumpInterrupted
				}
				return nil
			case unix.NLMSG_NOOP, unix.NLMSG_OVERRUN:
			default:
				if fn != nil {
					if err := fn(m); err != nil {
						return err
					}
				}
			}
		}
	}
}
