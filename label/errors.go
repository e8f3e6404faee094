package label

import (
	"errors"
	"fmt"
)

// Sentinels for errors.Is. Callers branch on the kind; the message, which
// names the bad token and the fix, is for the user.
var (
	// ErrSyntax is matched by every *SyntaxError.
	ErrSyntax = errors.New("label syntax error")
	// ErrInverted is matched by every *InvertedError: a range or bound
	// whose high end does not dominate its low end.
	ErrInverted = errors.New("inverted range")
	// ErrOutOfRange reports a hand-built value (not parsed text) whose
	// sensitivity or integrity exceeds the maximum.
	ErrOutOfRange = errors.New("out of range")
)

// SyntaxError reports text that is not a valid label, level, range,
// context or bound.
type SyntaxError struct {
	Input  string // the whole text given to the parser
	Token  string // the offending part of Input
	Reason string // what is wrong and what is expected; names Token
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("label: %q: %s", e.Input, e.Reason)
}

// Is makes errors.Is(err, ErrSyntax) true.
func (e *SyntaxError) Is(target error) bool { return target == ErrSyntax }

func syntaxErr(input, token, format string, args ...any) error {
	return &SyntaxError{Input: input, Token: token, Reason: fmt.Sprintf(format, args...)}
}

// InvertedError reports a range whose High does not dominate its Low. Users
// most often meet it by writing high-low, so when swapping the ends would
// fix it, Fix holds the corrected text.
type InvertedError struct {
	Input     string // the whole text, or the printed value when validating
	Low, High string // the two ends as printed
	Fix       string // the swapped range when that is valid, else ""
}

func (e *InvertedError) Error() string {
	msg := fmt.Sprintf("label: %q: inverted range: high %s does not dominate low %s; write low-high", e.Input, e.High, e.Low)
	if e.Fix != "" {
		return msg + fmt.Sprintf(" (%s)", e.Fix)
	}
	return msg + " with high dominating low"
}

// Is makes errors.Is(err, ErrInverted) true.
func (e *InvertedError) Is(target error) bool { return target == ErrInverted }
