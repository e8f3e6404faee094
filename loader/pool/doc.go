// Package pool is VMLoad's table of guests and its pre-loaded pool (the
// paper's section 5.2.1). A guest is Idle (booted, serving no application),
// Prepared (configured for one application at one range ahead of demand,
// not yet handed out), Ready (serving one application at one
// secrecy/integrity range and able to take further loads), Full (serving,
// but at its load limit), Booting (a slot whose guest is being started) or
// Failed (to be destroyed).
//
// A load request goes first to a Ready guest already serving the same
// application at exactly the same range, then to a Prepared guest of that
// application and range built under the caller's current fingerprint
// (loader.WithReadyFingerprint: the hand-out is the whole load), then to an
// Idle guest of the requested template, and only then boots a new guest;
// while another load of the same application and range boots a guest that
// can take both, it waits for that one instead. A guest taken for an
// application is bound to it for good: it never serves a second
// application or a second range, even after its leases end, and a guest
// handed out is never Prepared again. A background refill keeps a
// configured number of Idle guests per template and, with Config.Ready,
// the Prepared guests each application asks for (`pool: {ready: N}`),
// replacing those built under an old fingerprint (a template, CA or
// application change; counted in Stats.Invalidated).
//
// The table lives in a bbolt file and every change is committed before the
// rest of the pool can see it, so a restart finds the same table; slots
// that were mid-boot or mid-configuration at a crash are reconciled on Open.
//
// The pool starts and stops guests only through the Boot, Destroy and Check
// functions it is given; it imports no backend and makes no syscalls
// itself, so it is tested without privileges. Like every library here it
// returns errors and never logs: Config.Progress and Stats are how a caller
// watches it.
package pool
