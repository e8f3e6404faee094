package ipsec

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

// TestJSONNames: bundles carry names as ip-xfrm(8) writes them, read back
// to the same values; a name the kernel has no number for is refused
// rather than read as the zero value (inbound, transport, allow).
func TestJSONNames(t *testing.T) {
	p := Policy{Dir: DirFwd, Action: ActionBlock, Src: netip.MustParsePrefix("10.0.0.1/32"), Dst: netip.MustParsePrefix("0.0.0.0/0"),
		Templates: []Template{{Proto: ProtoESP, Mode: ModeTunnel, Reqid: 1}}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"dir":"fwd"`, `"action":"block"`, `"proto":"esp"`, `"mode":"tunnel"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil || back.String() != p.String() {
		t.Errorf("round trip: %v, %v want %v", err, back, p)
	}
	for _, bad := range []string{`{"dir":"sideways"}`, `{"action":"maybe"}`, `{"templates":[{"mode":"beet"}]}`, `{"templates":[{"proto":"gre"}]}`} {
		var q Policy
		if err := json.Unmarshal([]byte(bad), &q); err == nil {
			t.Errorf("%s decoded to %v", bad, q)
		}
	}
	// A kernel value without a name still round-trips, as its number.
	m := Mode(4)
	if b, _ := m.MarshalText(); string(b) != "4" {
		t.Errorf("mode 4 marshals as %q", b)
	}
}
