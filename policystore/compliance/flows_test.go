package compliance

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/mlsgate/mlsgate/label"
)

// pidsiLabels gives the analyst's program components (executable,
// configuration) integrity i10, above the data and the process working on
// it (i2): Program Integrity Dominates System Integrity.
func pidsiLabels(t *testing.T) map[string]label.Bounds {
	return map[string]label.Bounds{
		"analyst_t":      mustBounds(t, "s3/i2"),
		"analyst_exec_t": mustBounds(t, "s0/i10"),
		"analyst_conf_t": mustBounds(t, "s0/i10"),
		"analyst_data_t": mustBounds(t, "s3/i2"),
		"user_home_t":    mustBounds(t, "s0/i2"),
		"tmp_t":          mustBounds(t, "s0/i0"),
	}
}

func TestFlows(t *testing.T) {
	t.Parallel()
	m, err := ParseTE("analyst.te", []byte(analystTE))
	if err != nil {
		t.Fatal(err)
	}
	rel, err := m.Flows(pidsiLabels(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rel {
		got = append(got, r.Source+" "+r.From+"→"+r.To+" "+r.Via)
	}
	L := func(sub string) string { return "analyst.te:" + itoa(lineOf(t, analystTE, sub)) }
	want := []string{
		L("allow analyst_t analyst_exec_t:file") + " analyst_exec_t→analyst_t read: file { read getattr execute }",
		L("allow analyst_t analyst_conf_t") + " analyst_conf_t→analyst_t read: file { read getattr open }",
		L("allow analyst_t analyst_data_t:{") + " analyst_data_t→analyst_t read: file { read search }, dir { read search }",
		L("allow analyst_t analyst_data_t:{") + " analyst_t→analyst_data_t write: file { write add_name }, dir { write add_name }",
		// signal and fork: the process writes to (another process of)
		// itself; no read. The capability rule makes no flow.
		L("allow analyst_t self:process") + " analyst_t→analyst_t write: process { signal fork }",
		L("allow analyst_t user_home_t") + " user_home_t→analyst_t read: file read",
		L("allow analyst_t tmp_t") + " tmp_t→analyst_t read: file read",
		// The alias resolves to its type.
		L("allow analyst_t analyst_bin_t") + " analyst_exec_t→analyst_t read: file getattr",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Flows:\n got %s\nwant %s", strings.Join(got, "\n     "), strings.Join(want, "\n     "))
	}
	if rel[0].FromLabels != mustBounds(t, "s0/i10") || rel[0].ToLabels != mustBounds(t, "s3/i2") || rel[0].SameLabel {
		t.Errorf("rule 0 labels: %v", rel[0])
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestFlowsUnlabeled(t *testing.T) {
	t.Parallel()
	m, err := ParseTE("analyst.te", []byte(analystTE))
	if err != nil {
		t.Fatal(err)
	}
	labels := pidsiLabels(t)
	delete(labels, "tmp_t")
	delete(labels, "analyst_conf_t")
	_, err = m.Flows(labels)
	if !errors.Is(err, ErrUnlabeled) {
		t.Fatalf("Flows error %v does not match ErrUnlabeled", err)
	}
	for _, want := range []string{
		`analyst.te:` + itoa(lineOf(t, analystTE, "allow analyst_t analyst_conf_t")) + `: type "analyst_conf_t" has no label`,
		`analyst.te:` + itoa(lineOf(t, analystTE, "allow analyst_t tmp_t")) + `: type "tmp_t" has no label`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// What cannot be checked does not comply.
	vs := CheckPIDSI(System{AllowUnknown: true}, m, labels)
	if len(vs) != 1 || vs[0].Kind != PolicyError || !strings.HasPrefix(vs[0].Error(), "cannot check analyst.te: analyst.te:") {
		t.Fatalf("CheckPIDSI without labels: %q", messages(vs))
	}
}

func TestCheckPIDSI(t *testing.T) {
	t.Parallel()
	const head = "module analyst 1.0;\nrequire { type analyst_t, analyst_exec_t, analyst_conf_t, analyst_data_t; }\n"
	sys := System{AllowUnknown: true}
	tests := map[string]struct {
		rules string
		want  []string
	}{
		"reads its executable and configuration, works on data": {rules: "" +
			"allow analyst_t analyst_exec_t:file { read execute getattr map };\n" +
			"allow analyst_t analyst_conf_t:file { read getattr open };\n" +
			"allow analyst_t analyst_data_t:file { read write create unlink };\n"},
		"writes its configuration from data": {rules: "allow analyst_t analyst_conf_t:file { read write };\n", want: []string{
			"analyst.te:3 (write: file write): analyst_t s3/i2 → analyst_conf_t s0/i10 would write down secrecy (s0 does not dominate s3)",
			"analyst.te:3 (write: file write): analyst_t s3/i2 → analyst_conf_t s0/i10 would write up integrity (i2 is below i10)",
		}},
		"replaces its executable": {rules: "allow analyst_t analyst_exec_t:file { rename setattr };\n", want: []string{
			"analyst.te:3 (write: file { rename setattr }): analyst_t s3/i2 → analyst_exec_t s0/i10 would write down secrecy (s0 does not dominate s3)",
			"analyst.te:3 (write: file { rename setattr }): analyst_t s3/i2 → analyst_exec_t s0/i10 would write up integrity (i2 is below i10)",
		}},
		"ioctl counts both ways": {rules: "allow analyst_t analyst_exec_t:file ioctl;\n", want: []string{
			"analyst.te:3 (write: file ioctl): analyst_t s3/i2 → analyst_exec_t s0/i10 would write down secrecy (s0 does not dominate s3)",
			"analyst.te:3 (write: file ioctl): analyst_t s3/i2 → analyst_exec_t s0/i10 would write up integrity (i2 is below i10)",
		}},
		"unknown permission counts both ways": {rules: "allow analyst_t analyst_conf_t:file frobnicate;\n", want: []string{
			"analyst.te:3 (write: file frobnicate(unclassified)): analyst_t s3/i2 → analyst_conf_t s0/i10 would write down secrecy (s0 does not dominate s3)",
			"analyst.te:3 (write: file frobnicate(unclassified)): analyst_t s3/i2 → analyst_conf_t s0/i10 would write up integrity (i2 is below i10)",
		}},
		"all permissions on its configuration": {rules: "allow analyst_t analyst_conf_t:file *;\n", want: []string{
			"analyst.te:3 (write: file *): analyst_t s3/i2 → analyst_conf_t s0/i10 would write down secrecy (s0 does not dominate s3)",
			"analyst.te:3 (write: file *): analyst_t s3/i2 → analyst_conf_t s0/i10 would write up integrity (i2 is below i10)",
		}},
		"a neverallow grants nothing": {rules: "neverallow analyst_t analyst_conf_t:file write;\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m, err := ParseTE("analyst.te", []byte(head+tc.rules))
			if err != nil {
				t.Fatal(err)
			}
			got := messages(CheckPIDSI(sys, m, pidsiLabels(t)))
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("CheckPIDSI:\n got %q\nwant %q", got, tc.want)
			}
		})
	}

	// The paper's first condition: the program's types fall within the
	// VM's range. Here the VM is s0-s2, and the data at s3 is outside.
	m, err := ParseTE("analyst.te", []byte(head+"allow analyst_t analyst_data_t:file read;\n"))
	if err != nil {
		t.Fatal(err)
	}
	vm := mustBounds(t, "s0-s2/i0-i15")
	vmSys := System{Entities: map[string]label.Bounds{"analyst_t": vm, "analyst_data_t": vm}}
	got := messages(CheckPIDSI(vmSys, m, pidsiLabels(t)))
	want := []string{
		"analyst.te:3 (read: file read): analyst_data_t s3/i2 → analyst_t s3/i2 puts data at s3/i2 in analyst_data_t, outside its bounds s0-s2/i0-i15",
		"analyst.te:3 (read: file read): analyst_data_t s3/i2 → analyst_t s3/i2 puts data at s3/i2 in analyst_t, outside its bounds s0-s2/i0-i15",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("CheckPIDSI in a VM:\n got %q\nwant %q", got, want)
	}
}

func TestClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		class, perm string
		want        Direction
		known       bool
	}{
		{"file", "read", Read, true},
		{"file", "getattr", Read, true},
		{"file", "write", Write, true},
		{"dir", "add_name", Write, true},
		{"unix_stream_socket", "connectto", Write, true},
		{"association", "recvfrom", Read, true},
		{"association", "polmatch", Read, true},
		{"file", "ioctl", Both, true},
		{"file", "lock", Both, true},
		{"process", "ptrace", Both, true},
		{"tcp_socket", "name_bind", None, true},
		{"file", "map", None, true},
		{"capability", "dac_override", None, true},
		{"capability", "frobnicate", None, true},
		{"file", "frobnicate", Both, false},
	}
	for _, tc := range tests {
		d, known := Classify(tc.class, tc.perm)
		if d != tc.want || known != tc.known {
			t.Errorf("Classify(%s, %s) = %v, %v; want %v, %v", tc.class, tc.perm, d, known, tc.want, tc.known)
		}
	}
	if s := Both.String() + " " + None.String(); s != "both none" {
		t.Errorf("Direction strings: %q", s)
	}
}
