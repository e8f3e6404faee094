package policystore

import (
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/mlsgate/mlsgate/label"
)

// ErrNoApplication is returned for a URL that no application claims.
var ErrNoApplication = errors.New("no application for URL")

// ErrBadURL marks a URL the store refuses to resolve.
var ErrBadURL = errors.New("bad URL")

// MaxURLLen bounds the URLs the store resolves.
const MaxURLLen = 8 << 10

// Resolution is the answer to "which application does this URL belong to".
type Resolution struct {
	App *Application
	// Server is the server whose host name matched; nil when the URL matched
	// one of the application's further URL patterns.
	Server *Server
	// Range bounds the labels of the URL's data: the server's range, or the
	// guest range for a URL pattern without a server.
	Range label.Bounds
	// Pattern is what matched, for logs ("ws1.analyst.example/").
	Pattern string
}

// Index resolves URLs to applications in time independent of the number of
// applications: a hash lookup per label of the host name (exact name first,
// then "*.parent" wildcards from the most specific), then the longest path
// prefix among the few patterns of that host. It is immutable; build a new
// one to change it.
type Index struct {
	exact    map[string][]entry // host -> entries, longest path first
	wildcard map[string][]entry // suffix (without "*.") -> entries
	apps     map[string]*Application
}

type entry struct {
	path   string
	app    *Application
	server *Server
}

// NewIndex builds the index and refuses conflicts: two applications that
// claim the same host and path (a URL must belong to one application only,
// or a guest could be loaded for the wrong one).
func NewIndex(apps []*Application) (*Index, error) {
	ix := &Index{exact: map[string][]entry{}, wildcard: map[string][]entry{}, apps: map[string]*Application{}}
	for _, a := range apps {
		if _, dup := ix.apps[a.Name]; dup {
			return nil, fmt.Errorf("%w: application %q is defined twice", ErrApplication, a.Name)
		}
		ix.apps[a.Name] = a
		for i := range a.Servers {
			s := &a.Servers[i]
			for _, h := range s.Hosts {
				if err := ix.add(h, "/", a, s); err != nil {
					return nil, err
				}
			}
		}
		for _, p := range a.URLs {
			path := p.PathPrefix
			if path == "" {
				path = "/"
			}
			if err := ix.add(p.Host, path, a, nil); err != nil {
				return nil, err
			}
		}
	}
	for _, m := range []map[string][]entry{ix.exact, ix.wildcard} {
		for h, es := range m {
			sort.SliceStable(es, func(i, j int) bool { return len(es[i].path) > len(es[j].path) })
			m[h] = es
		}
	}
	return ix, nil
}

func (ix *Index) add(host, path string, a *Application, s *Server) error {
	m, key := ix.exact, host
	if strings.HasPrefix(host, "*.") {
		m, key = ix.wildcard, host[2:]
	}
	for _, e := range m[key] {
		if e.path != path {
			continue
		}
		if e.app != a {
			return fmt.Errorf("%w: %s%s is claimed by applications %q and %q: a URL must belong to one application", ErrApplication, host, path, e.app.Name, a.Name)
		}
		if e.server == nil && s != nil {
			// A server's own host wins over the app's generic pattern.
			e.server = s
		}
		return nil
	}
	m[key] = append(m[key], entry{path: path, app: a, server: s})
	return nil
}

// App returns an application by name.
func (ix *Index) App(name string) (*Application, bool) {
	a, ok := ix.apps[name]
	return a, ok
}

// Apps lists the applications sorted by name.
func (ix *Index) Apps() []*Application {
	out := make([]*Application, 0, len(ix.apps))
	for _, a := range ix.apps {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Len is the number of applications.
func (ix *Index) Len() int { return len(ix.apps) }

// Resolve finds the application of an absolute http(s) URL.
func (ix *Index) Resolve(rawURL string) (Resolution, error) {
	host, path, err := SplitURL(rawURL)
	if err != nil {
		return Resolution{}, err
	}
	if e, ok := match(ix.exact[host], path); ok {
		return e.resolution(host), nil
	}
	for rest := host; ; {
		dot := strings.IndexByte(rest, '.')
		if dot < 0 {
			break
		}
		rest = rest[dot+1:]
		if e, ok := match(ix.wildcard[rest], path); ok {
			return e.resolution("*." + rest), nil
		}
	}
	return Resolution{}, fmt.Errorf("%w %q: no application claims host %q; add it to an application's servers or urls", ErrNoApplication, rawURL, host)
}

func match(es []entry, path string) (entry, bool) {
	for _, e := range es { // longest path first
		if strings.HasPrefix(path, e.path) {
			return e, true
		}
	}
	return entry{}, false
}

func (e entry) resolution(host string) Resolution {
	r := Resolution{App: e.app, Server: e.server, Range: e.app.Guest, Pattern: host + e.path}
	if e.server != nil {
		r.Range = e.server.Range
	}
	return r
}

// SplitURL checks an absolute http or https URL and returns its host
// (lower-case, without port) and its path ("/" when empty).
func SplitURL(rawURL string) (host, path string, err error) {
	if len(rawURL) > MaxURLLen {
		return "", "", fmt.Errorf("%w: %d bytes; at most %d", ErrBadURL, len(rawURL), MaxURLLen)
	}
	for i := 0; i < len(rawURL); i++ {
		if c := rawURL[i]; c < 0x20 || c == 0x7f {
			return "", "", fmt.Errorf("%w %q: control character at byte %d", ErrBadURL, rawURL, i)
		}
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", "", fmt.Errorf("%w %q: want an absolute http:// or https:// URL", ErrBadURL, rawURL)
	}
	host = strings.ToLower(u.Hostname())
	if host == "" {
		return "", "", fmt.Errorf("%w %q: no host name", ErrBadURL, rawURL)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return "", "", fmt.Errorf("%w %q: bad port %q", ErrBadURL, rawURL, p)
		}
	}
	host = strings.TrimSuffix(host, ".")
	path = u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return host, path, nil
}
