package updatedaemon

import (
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/mapper"
)

// TestPushParsesTheMapperPolicyOnce: a push's validation and its apply
// share one parse of the mapper policy (each compiles every rule's regex),
// and the mapper serves that parse; another text is parsed anew, and a
// policy that does not parse is still refused by the apply.
func TestPushParsesTheMapperPolicyOnce(t *testing.T) {
	parses := 0
	parsePolicy = func(name string, data []byte) (*mapper.Policy, error) {
		parses++
		return mapper.ParsePolicy(name, data)
	}
	t.Cleanup(func() { parsePolicy = mapper.ParsePolicy })
	b := analystBundle(t, nil, 1, 0x4000).GuestPart()
	if err := checkContent(b); err != nil {
		t.Fatal(err)
	}
	m, err := mapper.New(mapper.Config{ID: "vm7"})
	if err != nil {
		t.Fatal(err)
	}
	a := &SystemApplier{Mapper: m}
	rep, err := a.LoadMapperPolicy(mapperName(b), []byte(b.MapperPolicy))
	if err != nil {
		t.Fatal(err)
	}
	validated, err := parseMapperPolicy(mapperName(b), []byte(b.MapperPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if parses != 1 || rep.Rules == 0 || m.Policy() != validated {
		t.Errorf("%d parses, report %+v, mapper serving %q (the validation's parse: %v): want 1 parse, served", parses, rep, m.Policy().File, m.Policy() == validated)
	}
	other := b.MapperPolicy + "\n# another text\n"
	if _, err := a.LoadMapperPolicy(mapperName(b), []byte(other)); err != nil || parses != 2 {
		t.Errorf("another text: %v after %d parses, want it parsed (2)", err, parses)
	}
	if _, err := a.LoadMapperPolicy("bad.policy", []byte("map [ s0/i0\n")); err == nil || !strings.Contains(err.Error(), "bad.policy") {
		t.Errorf("a policy that does not parse: %v", err)
	}
	if m.Policy().File != mapperName(b) {
		t.Errorf("after a refused policy the mapper serves %q", m.Policy().File)
	}
}
