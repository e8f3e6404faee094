package xfrm

import (
	"errors"
	"reflect"
	"testing"
)

// FuzzParseMessage feeds arbitrary buffers to the parser a subscription
// runs on every read. It must never panic, must return only ParseErrors,
// and what it reads as an SA or policy must survive being written and read
// again unchanged.
func FuzzParseMessage(f *testing.F) {
	for _, s := range sampleStates() {
		b, _ := encodeSA(&s)
		f.Add(frame(msgNewSA, b))
		f.Add(frame(msgExpire, append(encodeUsersaInfo(&s), make([]byte, 8)...)))
	}
	for _, p := range samplePolicies() {
		b, _ := encodePolicy(&p)
		f.Add(frame(msgNewPolicy, b))
		id := appendAttr(encodeUserpolicyID(&p), attrPolicy, b[:sizeofUserpolicyInfo])
		f.Add(frame(msgDelPolicy, append(id, b[sizeofUserpolicyInfo:]...)))
	}
	f.Add(frame(msgFlushSA, []byte{50}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		evs, err := parseMessage(b)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error of type %T: %v", err, err)
			}
		}
		for _, ev := range evs {
			switch {
			case ev.Kind == NewSA && ev.State != nil:
				enc, err := encodeSA(ev.State)
				if err != nil {
					continue // parsed, but not something this package writes
				}
				again := onlyEventFuzz(t, frame(msgNewSA, enc))
				if !reflect.DeepEqual(again.State, ev.State) {
					t.Fatalf("SA changed on a round trip:\n%v\n%v", ev.State, again.State)
				}
			case ev.Kind == NewPolicy && ev.Policy != nil:
				enc, err := encodePolicy(ev.Policy)
				if err != nil {
					continue
				}
				again := onlyEventFuzz(t, frame(msgNewPolicy, enc))
				if !reflect.DeepEqual(again.Policy, ev.Policy) {
					t.Fatalf("policy changed on a round trip:\n%v\n%v", ev.Policy, again.Policy)
				}
			}
		}
	})
}

func onlyEventFuzz(t *testing.T, b []byte) Event {
	t.Helper()
	evs, err := parseMessage(b)
	if err != nil || len(evs) != 1 {
		t.Fatalf("re-encoded message: %d events, %v", len(evs), err)
	}
	return evs[0]
}
