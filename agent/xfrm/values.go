package xfrm

import (
	"errors"

	"github.com/mlsgate/mlsgate/ipsec"
)

// The values this package encodes are package ipsec's; these names are the
// same types, so that the codec's callers need not import both.
type (
	State    = ipsec.State
	Policy   = ipsec.Policy
	Template = ipsec.Template
	Selector = ipsec.Selector
	Lifetime = ipsec.Lifetime
	Algo     = ipsec.Algo
	Proto    = ipsec.Proto
	Mode     = ipsec.Mode
	Dir      = ipsec.Dir
	Action   = ipsec.Action
)

// Names of the values, as package ipsec defines them.
const (
	ProtoESP      = ipsec.ProtoESP
	ProtoAH       = ipsec.ProtoAH
	ProtoComp     = ipsec.ProtoComp
	ModeTransport = ipsec.ModeTransport
	ModeTunnel    = ipsec.ModeTunnel
	DirIn         = ipsec.DirIn
	DirOut        = ipsec.DirOut
	DirFwd        = ipsec.DirFwd
	ActionAllow   = ipsec.ActionAllow
	ActionBlock   = ipsec.ActionBlock

	DefaultReplayWindow = ipsec.DefaultReplayWindow
	MaxContextLen       = ipsec.MaxContextLen
	MaxKeyLen           = ipsec.MaxKeyLen
)

// ErrNoESP reports a kernel without the ESP transform (CONFIG_INET_ESP or
// CONFIG_INET6_ESP not built): it knows XFRM but refuses ESP SAs with
// EPROTONOSUPPORT ("Requested type not found").
var ErrNoESP = errors.New("this kernel lacks the ESP transform")

// ErrNoAlgorithm reports an SA whose algorithm the kernel's crypto API does
// not provide (ENOSYS, "Requested ... algorithm not found"). The kernel
// checks algorithms before the transform, so a kernel without ESP and
// without the algorithm reports this one.
var ErrNoAlgorithm = errors.New("this kernel lacks the algorithm")

// ErrInvalidContext reports a security context the loaded SELinux policy
// does not accept, as SELinux itself confirmed through its context check
// (selinuxfs's context file).
var ErrInvalidContext = errors.New("security context is not valid under the loaded SELinux policy")
