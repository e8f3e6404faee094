package mapper

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"
)

// MaxURLBytes is the longest URL the mapper accepts, before normalization.
const MaxURLBytes = 8 << 10

// ErrInvalidURL is matched by every *URLError.
var ErrInvalidURL = errors.New("invalid URL")

// URLError reports a URL the mapper refuses to label. Reason names what is
// wrong and what to send instead.
type URLError struct {
	URL    string // the URL as given, cut to 200 bytes
	Reason string
}

// Error prints the URL and the reason.
func (e *URLError) Error() string {
	return fmt.Sprintf("url %q: %s", e.URL, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidURL) true.
func (e *URLError) Is(target error) bool { return target == ErrInvalidURL }

func urlErr(raw, format string, args ...any) error {
	if len(raw) > 200 {
		raw = raw[:200] + "..."
	}
	return &URLError{URL: raw, Reason: fmt.Sprintf(format, args...)}
}

// NormalizeURL returns the form of raw that policies are matched against and
// the cache is keyed by: "scheme://host[:port]/path[?query]".
//
// The scheme and host are lowercased, a trailing dot on the host is dropped,
// the default port (80 for http, 443 for https) is removed, an empty path
// becomes "/", "." and ".." path segments (also written %2e) are resolved as
// RFC 3986 section 5.2.4 says, so "/public/../secret" cannot pass for a
// public page, and the fragment, which never reaches the server, is
// dropped. Otherwise the path and query are kept byte for byte, so a rule
// sees what the browser asked for.
//
// It refuses, with a *URLError naming the fix: URLs longer than MaxURLBytes,
// URLs that are not absolute http or https, URLs with user info, non-ASCII
// hosts (send the punycode form), and URLs containing control characters,
// spaces or invalid UTF-8 (percent-encode them).
func NormalizeURL(raw string) (string, error) {
	if len(raw) > MaxURLBytes {
		return "", urlErr(raw, "is %d bytes; the limit is %d", len(raw), MaxURLBytes)
	}
	if raw == "" {
		return "", urlErr(raw, "is empty; send an absolute http or https URL")
	}
	if isNormal(raw) {
		return raw, nil
	}
	return normalizeSlow(raw)
}

// normalizeSlow is NormalizeURL without the fast path for URLs already in
// normal form.
func normalizeSlow(raw string) (string, error) {
	if len(raw) > MaxURLBytes {
		return "", urlErr(raw, "is %d bytes; the limit is %d", len(raw), MaxURLBytes)
	}
	if !utf8.ValidString(raw) {
		return "", urlErr(raw, "is not valid UTF-8; percent-encode the bytes")
	}
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c < 0x20 || c == 0x7f {
			return "", urlErr(raw, "has control character 0x%02x at byte %d; percent-encode it", c, i)
		}
		if c == ' ' {
			return "", urlErr(raw, "has a space at byte %d; percent-encode it as %%20", i)
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", urlErr(raw, "does not parse (%v); send an absolute http or https URL", err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		if u.Scheme == "" {
			return "", urlErr(raw, "is not absolute; send scheme and host, e.g. https://example.org/")
		}
		return "", urlErr(raw, "has scheme %q; only http and https URLs are labeled", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" {
		return "", urlErr(raw, "has no host; write %s://host/path", scheme)
	}
	if u.User != nil {
		return "", urlErr(raw, "carries user info; remove the part before '@'")
	}
	host, port := u.Hostname(), u.Port()
	for i := 0; i < len(host); i++ {
		if host[i] >= utf8.RuneSelf {
			return "", urlErr(raw, "has a non-ASCII host; send its punycode (xn--) form")
		}
	}
	host = strings.ToLower(host)
	if strings.Contains(host, ":") { // IPv6 literal
		host = "[" + host + "]"
	} else {
		host = strings.TrimSuffix(host, ".")
	}
	if host == "" || host == "[]" {
		return "", urlErr(raw, "has an empty host; write %s://host/path", scheme)
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	var b strings.Builder
	b.Grow(len(raw) + 1)
	b.WriteString(scheme)
	b.WriteString("://")
	b.WriteString(host)
	if port != "" {
		b.WriteByte(':')
		b.WriteString(port)
	}
	path := removeDotSegments(u.EscapedPath())
	b.WriteString(path)
	if u.ForceQuery || u.RawQuery != "" {
		b.WriteByte('?')
		b.WriteString(u.RawQuery)
	}
	return b.String(), nil
}

// isNormal reports, without allocating, whether raw is already in the form
// NormalizeURL returns, for the common shape of URL: lowercase http or
// https, a host of [a-z0-9.-_] with no trailing dot, an optional port that is
// not the default, a path of unreserved characters, sub-delimiters and
// valid %XX escapes, and a printable ASCII query. Anything else takes the
// slow path. FuzzNormalizeURL holds the two paths equal.
func isNormal(raw string) bool {
	var rest string
	defPort := ""
	switch {
	case strings.HasPrefix(raw, "https://"):
		rest, defPort = raw[len("https://"):], "443"
	case strings.HasPrefix(raw, "http://"):
		rest, defPort = raw[len("http://"):], "80"
	default:
		return false
	}
	i := 0
	for i < len(rest) && (isLowerAlnum(rest[i]) || rest[i] == '.' || rest[i] == '-' || rest[i] == '_') {
		i++
	}
	if i == 0 || rest[i-1] == '.' {
		return false
	}
	if i < len(rest) && rest[i] == ':' {
		j := i + 1
		for j < len(rest) && '0' <= rest[j] && rest[j] <= '9' {
			j++
		}
		if j == i+1 || rest[i+1:j] == defPort {
			return false
		}
		i = j
	}
	if i == len(rest) || rest[i] != '/' {
		return false
	}
	for ; i < len(rest); i++ {
		c := rest[i]
		switch {
		case isLowerAlnum(c) || 'A' <= c && c <= 'Z':
		case c == '.' && rest[i-1] == '/':
			return false // maybe a dot segment: the slow path resolves it
		case strings.IndexByte("-._~/!$&'()*+,;=:@", c) >= 0:
		case c == '%':
			if i+2 >= len(rest) || !isHex(rest[i+1]) || !isHex(rest[i+2]) || rest[i+1] == '2' && (rest[i+2] == 'e' || rest[i+2] == 'E') {
				return false
			}
			i += 2
		case c == '?':
			for _, q := range []byte(rest[i+1:]) {
				if q <= ' ' || q >= 0x7f || q == '#' {
					return false
				}
			}
			return true
		default:
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// removeDotSegments resolves "." and ".." segments (also %2e, %2E) of an
// escaped path; "" becomes "/". A ".." above the root is dropped.
func removeDotSegments(p string) string {
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, seg := range segs {
		last := i == len(segs)-1
		switch dotSegment(seg) {
		case 1:
			if last {
				out = append(out, "")
			}
		case 2:
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, seg)
		}
	}
	return "/" + strings.Join(out, "/")
}

// dotSegment returns 1 for ".", 2 for "..", 0 otherwise.
func dotSegment(seg string) int {
	n := 0
	for len(seg) > 0 {
		switch {
		case seg[0] == '.':
			seg = seg[1:]
		case len(seg) >= 3 && seg[0] == '%' && seg[1] == '2' && (seg[2] == 'e' || seg[2] == 'E'):
			seg = seg[3:]
		default:
			return 0
		}
		if n++; n > 2 {
			return 0
		}
	}
	return n
}
