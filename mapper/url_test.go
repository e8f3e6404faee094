package mapper

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeURL(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"https://a.org/p?q=1", "https://a.org/p?q=1"},
		{"HTTPS://A.Org/P", "https://a.org/P"},
		{"http://a.org:80/x", "http://a.org/x"},
		{"https://a.org:443", "https://a.org/"},
		{"https://a.org:80/", "https://a.org:80/"},
		{"http://a.org:/x", "http://a.org/x"},
		{"https://a.org./x", "https://a.org/x"},
		{"https://a.org/x#frag", "https://a.org/x"},
		{"https://a.org?", "https://a.org/?"},
		{"http://[::1]:8080/p", "http://[::1]:8080/p"},
		{"http://[::1]:80/p", "http://[::1]/p"},
		{"https://a.org/public/../secret/x", "https://a.org/secret/x"},
		{"https://a.org/public/%2e%2E/secret", "https://a.org/secret"},
		{"https://a.org/a/./b/.", "https://a.org/a/b/"},
		{"https://a.org/../../x", "https://a.org/x"},
		{"https://a.org/a%2Fb/%41", "https://a.org/a%2Fb/%41"},
		{"https://a.org/.well-known/x", "https://a.org/.well-known/x"},
		{"https://a.org/é", "https://a.org/%C3%A9"},
		{"https://a.org/x?a=b/../c", "https://a.org/x?a=b/../c"},
	} {
		got, err := NormalizeURL(c.in)
		if err != nil || got != c.want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestNormalizeURLRejects(t *testing.T) {
	for _, c := range []struct{ in, part string }{
		{"", "empty"},
		{"a.org/x", "not absolute"},
		{"/x", "not absolute"},
		{"ftp://a.org/", `scheme "ftp"`},
		{"mailto:x@a.org", `scheme "mailto"`},
		{"https:opaque", "no host"},
		{"https:///x", "no host"},
		{"https://user:pw@a.org/", "user info"},
		{"https://bücher.example/", "punycode"},
		{"https://a.org/x y", "space at byte 15"},
		{"https://a.org/\x7f", "control character 0x7f"},
		{"https://a.org/\n", "control character 0x0a"},
		{"https://a.org/\xff", "UTF-8"},
		{"https://a.org:99999999999999999999x/", "does not parse"},
		{"https://a.org/" + strings.Repeat("a", MaxURLBytes), "limit is 8192"},
	} {
		_, err := NormalizeURL(c.in)
		if !errors.Is(err, ErrInvalidURL) || !strings.Contains(err.Error(), c.part) {
			t.Errorf("NormalizeURL(%q) = %v; want ErrInvalidURL mentioning %q", c.in, err, c.part)
		}
	}
}
