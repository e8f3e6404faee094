// Package pool is VMLoad's table of guests and its pre-loaded pool (the
// paper's section 5.2.1). A guest is Idle (booted, serving no application),
// Ready (serving one application at one secrecy/integrity range and able to
// take further loads), Full (serving, but at its load limit), Booting (a
// slot whose guest is being started) or Failed (to be destroyed).
//
// A load request goes first to a Ready guest already serving the same
// application at exactly the same range, then to an Idle guest of the
// requested template, and only then boots a new guest. A guest taken for an
// application is bound to it for good: it never serves a second
// application or a second range, even after its leases end. A background
// refill keeps a configured number of Idle guests per template.
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
