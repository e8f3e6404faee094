package xfrm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Kind is what an [Event] reports.
type Kind uint8

// Event kinds. The kernel's message for each is named beside it.
const (
	// NewSA: an SA was added (XFRM_MSG_NEWSA).
	NewSA Kind = iota + 1
	// UpdSA: an SA was replaced (XFRM_MSG_UPDSA).
	UpdSA
	// DelSA: an SA was deleted (XFRM_MSG_DELSA).
	DelSA
	// ExpireSA: an SA reached a soft or hard limit (XFRM_MSG_EXPIRE). At
	// a hard limit the kernel removes the SA without a DelSA; the State
	// carries the SA's header but no context or keys.
	ExpireSA
	// NewPolicy, UpdPolicy, DelPolicy: a policy was added, replaced or
	// deleted. The kernel puts no context in these messages.
	NewPolicy
	UpdPolicy
	DelPolicy
	// ExpirePolicy: a policy reached a limit (XFRM_MSG_POLEXPIRE).
	ExpirePolicy
	// FlushSA: every SA of Proto (0: all) was deleted at once.
	FlushSA
	// FlushPolicy: every policy was deleted at once.
	FlushPolicy
	// Resync: events were lost (the socket overran, or a message could
	// not be parsed); re-read the SAs and policies. Err says why.
	Resync
	// Failed: the subscription ended on an error, in Err, before its
	// context did; the channel closes after it.
	Failed
)

var kindNames = [...]string{
	NewSA: "new-sa", UpdSA: "update-sa", DelSA: "delete-sa", ExpireSA: "expire-sa",
	NewPolicy: "new-policy", UpdPolicy: "update-policy", DelPolicy: "delete-policy",
	ExpirePolicy: "expire-policy", FlushSA: "flush-sa", FlushPolicy: "flush-policy",
	Resync: "resync", Failed: "failed",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Event is one change the kernel reported.
type Event struct {
	Kind Kind
	// State is the SA for the SA kinds.
	State *State
	// Policy is the policy for the policy kinds.
	Policy *Policy
	// Hard tells a hard expiry from a soft one.
	Hard bool
	// Proto is the protocol a FlushSA applied to; 0 means all.
	Proto Proto
	// Err is the reason of a Resync or Failed.
	Err error
}

func (e Event) String() string {
	s := e.Kind.String()
	switch {
	case e.State != nil:
		s += " " + e.State.String()
	case e.Policy != nil:
		s += " " + e.Policy.String()
	}
	if e.Kind == ExpireSA || e.Kind == ExpirePolicy {
		if e.Hard {
			s += " hard"
		} else {
			s += " soft"
		}
	}
	if e.Kind == FlushSA && e.Proto != 0 {
		s += " " + e.Proto.String()
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// message is one netlink message: its header fields and payload, and the
// payload's offset in the buffer it came from.
type message struct {
	typ, flags uint16
	seq, pid   uint32
	data       []byte
}

// splitMessages splits a buffer read from a netlink socket into messages.
func splitMessages(b []byte) ([]message, error) {
	var msgs []message
	off := 0
	for off < len(b) {
		if len(b)-off < nlmsgHdrLen {
			return nil, &ParseError{Offset: off, Reason: fmt.Sprintf("%d bytes left, shorter than a netlink header", len(b)-off)}
		}
		l := int(ne.Uint32(b[off:]))
		typ := ne.Uint16(b[off+4:])
		if l < nlmsgHdrLen || l > len(b)-off {
			return nil, &ParseError{Type: typ, Offset: off, Reason: fmt.Sprintf("netlink length %d, but %d bytes remain", l, len(b)-off)}
		}
		msgs = append(msgs, message{
			typ:   typ,
			flags: ne.Uint16(b[off+6:]),
			seq:   ne.Uint32(b[off+8:]),
			pid:   ne.Uint32(b[off+12:]),
			data:  b[off+nlmsgHdrLen : off+l],
		})
		off += align4(l)
	}
	return msgs, nil
}

// decodeEvent turns one XFRM message into an event. ok is false for
// message types that are not events this package reports.
func decodeEvent(m message) (ev Event, ok bool, err error) {
	d := decoder{typ: m.typ, base: nlmsgHdrLen}
	b := m.data
	switch m.typ {
	case msgNewSA, msgUpdSA:
		s, err := d.decodeSA(b)
		if err != nil {
			return Event{}, false, err
		}
		kind := NewSA
		if m.typ == msgUpdSA {
			kind = UpdSA
		}
		return Event{Kind: kind, State: &s}, true, nil

	case msgDelSA:
		// struct xfrm_usersa_id, then XFRMA_SA with the whole SA and
		// the SA's attributes.
		if len(b) < sizeofUsersaID {
			return Event{}, false, d.errorf(0, "%d bytes, shorter than struct xfrm_usersa_id (%d)", len(b), sizeofUsersaID)
		}
		s, err := d.decodeUsersaID(b)
		if err != nil {
			return Event{}, false, err
		}
		ad := d.at(align4(sizeofUsersaID))
		rest := b[min(len(b), align4(sizeofUsersaID)):]
		attrs, err := ad.parseAttrs(rest)
		if err != nil {
			return Event{}, false, err
		}
		for _, a := range attrs {
			if a.typ != attrSA {
				continue
			}
			sd := ad.at(a.off)
			if len(a.data) < sizeofUsersaInfo {
				return Event{}, false, sd.errorf(0, "XFRMA_SA of %d bytes is shorter than struct xfrm_usersa_info (%d)", len(a.data), sizeofUsersaInfo)
			}
			if s, err = sd.decodeUsersaInfo(a.data); err != nil {
				return Event{}, false, err
			}
		}
		if err := ad.decodeSAAttrs(&s, rest); err != nil {
			return Event{}, false, err
		}
		return Event{Kind: DelSA, State: &s}, true, nil

	case msgExpire:
		if len(b) < sizeofUserExpire {
			return Event{}, false, d.errorf(0, "%d bytes, shorter than struct xfrm_user_expire (%d)", len(b), sizeofUserExpire)
		}
		s, err := d.decodeUsersaInfo(b)
		if err != nil {
			return Event{}, false, err
		}
		if err := d.at(sizeofUserExpire).decodeSAAttrs(&s, b[sizeofUserExpire:]); err != nil {
			return Event{}, false, err
		}
		return Event{Kind: ExpireSA, State: &s, Hard: b[224] != 0}, true, nil

	case msgNewPolicy, msgUpdPolicy:
		p, _, err := d.decodePolicy(b)
		if err != nil {
			return Event{}, false, err
		}
		kind := NewPolicy
		if m.typ == msgUpdPolicy {
			kind = UpdPolicy
		}
		return Event{Kind: kind, Policy: &p}, true, nil

	case msgDelPolicy:
		// struct xfrm_userpolicy_id, then XFRMA_POLICY with the whole
		// policy and the templates.
		if len(b) < sizeofUserpolicyID {
			return Event{}, false, d.errorf(0, "%d bytes, shorter than struct xfrm_userpolicy_id (%d)", len(b), sizeofUserpolicyID)
		}
		p, err := d.decodeUserpolicyID(b)
		if err != nil {
			return Event{}, false, err
		}
		if _, err := d.at(sizeofUserpolicyID).decodePolicyAttrs(&p, b[sizeofUserpolicyID:]); err != nil {
			return Event{}, false, err
		}
		return Event{Kind: DelPolicy, Policy: &p}, true, nil

	case msgPolExpire:
		if len(b) < sizeofUserPolexpire {
			return Event{}, false, d.errorf(0, "%d bytes, shorter than struct xfrm_user_polexpire (%d)", len(b), sizeofUserPolexpire)
		}
		p, err := d.decodeUserpolicyInfo(b)
		if err != nil {
			return Event{}, false, err
		}
		if _, err := d.at(sizeofUserPolexpire).decodePolicyAttrs(&p, b[sizeofUserPolexpire:]); err != nil {
			return Event{}, false, err
		}
		return Event{Kind: ExpirePolicy, Policy: &p, Hard: b[168] != 0}, true, nil

	case msgFlushSA:
		if len(b) < sizeofUsersaFlush {
			return Event{}, false, d.errorf(0, "empty struct xfrm_usersa_flush")
		}
		return Event{Kind: FlushSA, Proto: Proto(b[0])}, true, nil

	case msgFlushPolicy:
		return Event{Kind: FlushPolicy}, true, nil

	case unix.NLMSG_NOOP, unix.NLMSG_DONE, unix.NLMSG_ERROR, unix.NLMSG_OVERRUN:
		return Event{}, false, nil
	}
	return Event{}, false, nil
}

// parseMessage parses a buffer read from an XFRM netlink socket into the
// events it reports. It is what a subscription runs on every read, and the
// fuzz target.
func parseMessage(b []byte) ([]Event, error) {
	msgs, err := splitMessages(b)
	if err != nil {
		return nil, err
	}
	var evs []Event
	for _, m := range msgs {
		ev, ok, err := decodeEvent(m)
		if err != nil {
			return evs, err
		}
		if ok {
			evs = append(evs, ev)
		}
	}
	return evs, nil
}
