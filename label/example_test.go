package label_test

import (
	"errors"
	"fmt"

	"github.com/mlsgate/mlsgate/label"
)

func ExampleParseBounds() {
	web, err := label.ParseBounds("s6-s15/i5-i15")
	if err != nil {
		panic(err)
	}
	req, _ := label.ParseLabel("s9:c3/i7")
	fmt.Println(web, web.Contains(req))
	// Output: s6-s15/i5-i15 false
}

func ExampleFromContext() {
	c, _ := label.ParseContext("system_u:system_r:httpd_t:s2:c1-s9:c1.c4")
	p := label.IntegrityPolicy{Default: 0, ByType: map[string]label.Integrity{"httpd_t": 8}}
	fmt.Println(label.FromContext(c, p))
	// Output: s2:c1/i8
}

func ExampleParseRange_inverted() {
	_, err := label.ParseRange("s9-s2")
	fmt.Println(errors.Is(err, label.ErrInverted))
	fmt.Println(err)
	// Output:
	// true
	// label: "s9-s2": inverted range: high s2 does not dominate low s9; write low-high (s2-s9)
}

func ExampleCategorySet_String() {
	s, _ := label.ParseCategories("c9,c1,c2,c3,c4,c5,c7,c8,c11,c12")
	fmt.Println(s)
	// Output: c1.c5,c7.c9,c11,c12
}
