package updatedaemon

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"time"
)

// Report says what one push did to the guest.
type Report struct {
	Guest       string `json:"guest"`
	Application string `json:"application"`
	Version     uint64 `json:"version"`
	// Digest identifies the bundle's content: "sha256:" and the hex digest
	// of its JSON.
	Digest string `json:"digest"`
	// AlreadyApplied is set when this very bundle had been applied before:
	// nothing was changed, and the other fields describe the earlier push.
	AlreadyApplied bool      `json:"already_applied,omitempty"`
	AppliedAt      time.Time `json:"applied_at"`
	// Took is how long applying took.
	Took time.Duration `json:"took_ns"`
	// Parts says where the daemon's time went, in order: reading the body
	// ("receive"), decoding and checking it ("validation"), "SELinux
	// modules", "mapper policy", "XFRM apply", and recording the applied
	// state ("state write", with its fsync). A part that had nothing to do
	// is there with its (small) duration.
	Parts []Part `json:"parts,omitempty"`
	// Wire is the client's side of the same push: "connect", "TLS
	// handshake" (both zero on a kept-alive connection), "send" (the
	// request and its body), "daemon" (until the first byte of the answer)
	// and "answer". Set by Client.Push; never sent.
	Wire []Part `json:"-"`

	Modules ModulesReport `json:"modules"`
	Mapper  MapperReport  `json:"mapper"`
	XFRM    XFRMReport    `json:"xfrm"`
	// Notes are facts an operator should know, such as parts of the bundle
	// the daemon does not install.
	Notes []string `json:"notes,omitempty"`

	// Failed names the step that failed and why; empty on success.
	Failed string `json:"failed,omitempty"`
	// RolledBack lists what was undone after the failure; NotRolledBack
	// what stayed changed, and why.
	RolledBack    []string `json:"rolled_back,omitempty"`
	NotRolledBack []string `json:"not_rolled_back,omitempty"`
}

// Part is one part of a push with its duration.
type Part struct {
	Name     string        `json:"name"`
	Duration time.Duration `json:"duration_ns"`
}

// ModulesReport says what happened to the bundle's SELinux modules.
type ModulesReport struct {
	Modules []string `json:"modules"`
	// Removed are the modules of the previous bundle this one dropped,
	// removed in the same transaction.
	Removed []string `json:"removed,omitempty"`
	// Loaded is true when semodule installed them; otherwise they were
	// only compiled (validated), and Note says why.
	Loaded bool   `json:"loaded"`
	Note   string `json:"note"`
}

// MapperReport describes the label-mapper policy that was loaded.
type MapperReport struct {
	Name     string `json:"name"`
	Rules    int    `json:"rules"`
	Forwards int    `json:"forwards"`
	Default  string `json:"default"`
}

// XFRMReport lists the SAs and policies a push added, updated (replaced)
// and removed, described without keys, and how many it left as they were.
type XFRMReport struct {
	StatesAdded       []string `json:"states_added,omitempty"`
	StatesUpdated     []string `json:"states_updated,omitempty"`
	StatesRemoved     []string `json:"states_removed,omitempty"`
	StatesUnchanged   int      `json:"states_unchanged"`
	PoliciesAdded     []string `json:"policies_added,omitempty"`
	PoliciesUpdated   []string `json:"policies_updated,omitempty"`
	PoliciesRemoved   []string `json:"policies_removed,omitempty"`
	PoliciesUnchanged int      `json:"policies_unchanged"`
	// NotUndone lists changes that a failed sync could not take back.
	NotUndone []string `json:"not_undone,omitempty"`
}

// Changes counts the SAs and policies added, updated and removed.
func (x XFRMReport) Changes() int {
	return len(x.StatesAdded) + len(x.StatesUpdated) + len(x.StatesRemoved) +
		len(x.PoliciesAdded) + len(x.PoliciesUpdated) + len(x.PoliciesRemoved)
}

// Status is the daemon's answer to GET /v1/status.
type Status struct {
	// Guest and Addrs are the identity bundles must name.
	Guest string       `json:"guest"`
	Addrs []netip.Addr `json:"addrs"`
	// Applied is the last bundle applied; nil before the first.
	Applied *Applied `json:"applied,omitempty"`
}

// Applied is the bundle a guest runs with.
type Applied struct {
	Application string    `json:"application"`
	Version     uint64    `json:"version"`
	Digest      string    `json:"digest"`
	AppliedAt   time.Time `json:"applied_at"`
	// Report is the report of the push that applied it.
	Report *Report `json:"report,omitempty"`
}

// Code classifies an Error. The daemon sends it in error bodies; the
// Client adds the codes of failures that happen before an answer.
type Code string

// The error codes.
const (
	CodeStale            Code = "stale"             // version below the applied one (409)
	CodeConflict         Code = "version_conflict"  // applied version, other content (409)
	CodeOtherApplication Code = "other_application" // the guest serves another application (409)
	CodeWrongGuest       Code = "wrong_guest"       // bundle names another guest (421)
	CodeBadBundle        Code = "bad_bundle"        // malformed or invalid bundle (400, 415)
	CodeTooLarge         Code = "too_large"         // body over MaxBundleBytes (413)
	CodeApplyFailed      Code = "apply_failed"      // a step failed; see the report (500)
	CodeTLS              Code = "tls"               // the TLS handshake failed or was refused
	CodeTimeout          Code = "timeout"           // no answer in time
	CodeUnreachable      Code = "unreachable"       // no connection
	CodeProtocol         Code = "protocol"          // an answer that is not the protocol's
)

// Sentinel errors, matched by errors.Is against an *Error of the same code.
var (
	ErrStale            = errors.New("stale bundle")
	ErrConflict         = errors.New("bundle version already applied with other content")
	ErrOtherApplication = errors.New("guest serves another application")
	ErrWrongGuest       = errors.New("bundle is for another guest")
	ErrBadBundle        = errors.New("bad bundle")
	ErrTooLarge         = errors.New("bundle too large")
	ErrApplyFailed      = errors.New("applying the bundle failed")
	ErrTLS              = errors.New("TLS handshake failed")
	ErrTimeout          = errors.New("update daemon did not answer in time")
	ErrUnreachable      = errors.New("update daemon unreachable")
	ErrProtocol         = errors.New("not an update daemon answer")
)

var codeErrors = map[Code]error{
	CodeStale: ErrStale, CodeConflict: ErrConflict, CodeOtherApplication: ErrOtherApplication,
	CodeWrongGuest: ErrWrongGuest, CodeBadBundle: ErrBadBundle, CodeTooLarge: ErrTooLarge,
	CodeApplyFailed: ErrApplyFailed, CodeTLS: ErrTLS, CodeTimeout: ErrTimeout,
	CodeUnreachable: ErrUnreachable, CodeProtocol: ErrProtocol,
}

// httpStatus is the status the daemon answers a code with.
func (c Code) httpStatus() int {
	switch c {
	case CodeStale, CodeConflict, CodeOtherApplication:
		return http.StatusConflict
	case CodeWrongGuest:
		return http.StatusMisdirectedRequest
	case CodeBadBundle:
		return http.StatusBadRequest
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusInternalServerError
}

// Error is a refused or failed push or status request.
type Error struct {
	// Addr is the daemon's address; the Client sets it.
	Addr string
	Code Code
	// Status is the HTTP status received; 0 when none was.
	Status int
	// Reason says what happened and what to do about it.
	Reason string
	// Report is the daemon's report of a failed apply.
	Report *Report
	// Err is the cause (a transport, TLS or applier error), if any.
	Err error
}

func (e *Error) Error() string {
	msg := e.Reason
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if e.Status != 0 {
		msg = fmt.Sprintf("%s (HTTP %d)", msg, e.Status)
	}
	if e.Addr != "" {
		return "update daemon " + e.Addr + ": " + msg
	}
	return msg
}

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	s, ok := codeErrors[e.Code]
	return ok && s == target
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// errorBody is the JSON of an error answer.
type errorBody struct {
	Error  string  `json:"error"`
	Code   Code    `json:"code"`
	Report *Report `json:"report,omitempty"`
}
