package mapper_test

import (
	"context"
	"fmt"

	"github.com/mlsgate/mlsgate/mapper"
)

func ExampleMapper_Lookup() {
	m, err := mapper.New(mapper.Config{ID: "dom0"})
	if err != nil {
		panic(err)
	}
	err = m.LoadBytes("dom0.policy", []byte(`
# the paper's example entry, and a plain label for a whole domain
map http://ws-vml\.cse\.psu\.edu/public\.html  root:sysadm_r:analyst_t:s4
map https?://([^/]*\.)?example\.org/.*         s2:c1/i3
default s0/i0
`))
	if err != nil {
		panic(err)
	}
	for _, u := range []string{
		"http://ws-vml.cse.psu.edu/public.html",
		"HTTPS://www.Example.org:443/a/../b",
		"https://elsewhere.net/",
	} {
		a, err := m.Lookup(context.Background(), u)
		if err != nil {
			panic(err)
		}
		fmt.Println(a.URL, a.Label, a.Source, a.Rule)
	}
	// Output:
	// http://ws-vml.cse.psu.edu/public.html s4/i0 rule dom0.policy:3
	// https://www.example.org/b s2:c1/i3 rule dom0.policy:4
	// https://elsewhere.net/ s0/i0 default dom0.policy:5
}

func ExampleParsePolicy_error() {
	_, err := mapper.ParsePolicy("guest.policy", []byte("map https://a\\.org/.* s3\nmap https://b\\.org/.* s3 i2\n"))
	fmt.Println(err)
	// Output:
	// guest.policy:2: "i2": a plain label carries its own integrity; write s3/i2 instead of two tokens
}
