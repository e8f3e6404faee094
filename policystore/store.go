package policystore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// The store keeps its state in one bbolt file. bbolt was chosen over SQLite
// (through a pure-Go driver) because the store's data is a handful of
// keyed records read far more often than written: bbolt is a small pure-Go
// B+tree with serialisable read-write transactions and an fsync on every
// commit, so a crash leaves either the old or the new state, and it needs
// no SQL layer, no cgo and no schema migrations.
var (
	bucketApps = []byte("apps")
	bucketMeta = []byte("meta")
	keySchema  = []byte("schema")
	schemaV1   = []byte("1")
)

// Source says where a stored application came from.
type Source string

// The two sources. Local applications come from the administrator's files
// and are replaced as a set; authority applications are a cache with an
// expiry.
const (
	SourceLocal     Source = "local"
	SourceAuthority Source = "authority"
)

// Entry is an application with its provenance.
type Entry struct {
	App     *Application `json:"app"`
	Source  Source       `json:"source"`
	Origin  string       `json:"origin"` // file name or authority URL
	Stored  time.Time    `json:"stored"`
	Expires time.Time    `json:"expires,omitzero"` // zero for local entries
}

// Expired reports whether a cached entry is past its expiry at now.
func (e *Entry) Expired(now time.Time) bool {
	return e.Source == SourceAuthority && !e.Expires.IsZero() && !now.Before(e.Expires)
}

// Store is the policy store's database: applications (local and cached
// from an authority) and per-application bundle version counters. Reads go
// to an immutable in-memory index swapped atomically after each commit, so
// URL resolution never waits for the disk.
type Store struct {
	db  *bolt.DB
	mu  sync.Mutex // serialises writers, so the index follows commit order
	cur atomic.Pointer[snapshot]
	now func() time.Time
}

type snapshot struct {
	index   *Index
	entries map[string]*Entry
}

// ErrStoreLocked is returned when another process holds the store file.
var ErrStoreLocked = errors.New("policy store is in use by another process")

// OpenStore opens or creates the store file at path.
func OpenStore(path string) (*Store, error) {
	// The store holds the applications' policy: a 0600 file in a
	// directory only this uid can write, never a planted file or link.
	if err := secretfile.PrepareFile(path); err != nil {
		return nil, fmt.Errorf("policy store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s is locked; stop the other mlsgate process or pass another --store path", ErrStoreLocked, path)
		}
		return nil, fmt.Errorf("open policy store %s: %w (if the file is damaged, move it away: the store is rebuilt from the application files and the authority)", path, err)
	}
	s := &Store{db: db, now: time.Now}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keySchema); {
		case v == nil:
			if err := meta.Put(keySchema, schemaV1); err != nil {
				return err
			}
		case string(v) != string(schemaV1):
			return fmt.Errorf("policy store %s has schema %q; this mlsgate reads schema %q", path, v, schemaV1)
		}
		_, err = tx.CreateBucketIfNotExists(bucketApps)
		return err
	})
	if err == nil {
		err = s.reload()
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the database file.
func (s *Store) Close() error { return s.db.Close() }

// reload rebuilds the in-memory snapshot from the database.
func (s *Store) reload() error {
	entries := map[string]*Entry{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).ForEach(func(k, v []byte) error {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("stored application %q does not decode: %w", k, err)
			}
			if e.App == nil || e.App.Name != string(k) {
				return fmt.Errorf("stored application %q is damaged", k)
			}
			entries[string(k)] = &e
			return nil
		})
	})
	if err != nil {
		return err
	}
	snap, err := newSnapshot(entries)
	if err != nil {
		return err
	}
	s.cur.Store(snap)
	return nil
}

func newSnapshot(entries map[string]*Entry) (*snapshot, error) {
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	apps := make([]*Application, 0, len(names))
	for _, n := range names {
		apps = append(apps, entries[n].App)
	}
	ix, err := NewIndex(apps)
	if err != nil {
		return nil, err
	}
	return &snapshot{index: ix, entries: entries}, nil
}

// update runs fn on a copy of the entries inside one transaction; the new
// entries must index cleanly or nothing is written.
func (s *Store) update(fn func(entries map[string]*Entry) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	next := make(map[string]*Entry, len(old.entries))
	for k, v := range old.entries {
		next[k] = v
	}
	if err := fn(next); err != nil {
		return err
	}
	snap, err := newSnapshot(next)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketApps)
		for name := range old.entries {
			if _, keep := next[name]; !keep {
				if err := b.Delete([]byte(name)); err != nil {
					return err
				}
			}
		}
		for name, e := range next {
			if old.entries[name] == e {
				continue
			}
			v, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write policy store: %w", err)
	}
	s.cur.Store(snap)
	return nil
}

// ReplaceLocal makes apps the complete set of local applications, in one
// transaction: either all of them are stored and indexed, or the store is
// unchanged. origin names where they came from (a directory).
func (s *Store) ReplaceLocal(apps []*Application, origin string) error {
	now := s.now()
	return s.update(func(entries map[string]*Entry) error {
		for name, e := range entries {
			if e.Source == SourceLocal {
				delete(entries, name)
			}
		}
		for _, a := range apps {
			if err := a.Validate(); err != nil {
				return fmt.Errorf("application %q: %w", a.Name, err)
			}
			if prev, ok := entries[a.Name]; ok && prev.Source == SourceLocal {
				return fmt.Errorf("%w: application %q given twice", ErrApplication, a.Name)
			}
			// A local definition replaces a cached one of the same name.
			entries[a.Name] = &Entry{App: a, Source: SourceLocal, Origin: origin, Stored: now}
		}
		return nil
	})
}

// SyncDir loads a directory of application files (LoadDir) and makes it
// the local set. On any error the store keeps serving what it had.
func (s *Store) SyncDir(dir string) ([]*Application, error) {
	apps, err := LoadDir(dir)
	if err != nil {
		return nil, err
	}
	if err := s.ReplaceLocal(apps, dir); err != nil {
		return nil, err
	}
	return apps, nil
}

// PutCached stores an application fetched from an authority until expires.
// A local application of the same name is never replaced by a cached one.
func (s *Store) PutCached(a *Application, origin string, expires time.Time) error {
	if err := a.Validate(); err != nil {
		return fmt.Errorf("application %q from %s: %w", a.Name, origin, err)
	}
	now := s.now()
	return s.update(func(entries map[string]*Entry) error {
		if prev, ok := entries[a.Name]; ok && prev.Source == SourceLocal {
			return fmt.Errorf("application %q from %s: a local application of that name exists and takes precedence", a.Name, origin)
		}
		entries[a.Name] = &Entry{App: a, Source: SourceAuthority, Origin: origin, Stored: now, Expires: expires}
		return nil
	})
}

// Invalidate drops a cached application so that the next request fetches
// it again. Local applications are not touched (edit their file instead);
// it reports whether an entry was dropped.
func (s *Store) Invalidate(name string) (bool, error) {
	dropped := false
	err := s.update(func(entries map[string]*Entry) error {
		if e, ok := entries[name]; ok && e.Source == SourceAuthority {
			delete(entries, name)
			dropped = true
		}
		return nil
	})
	return dropped, err
}

// InvalidateAll drops every cached application.
func (s *Store) InvalidateAll() (int, error) {
	n := 0
	err := s.update(func(entries map[string]*Entry) error {
		for name, e := range entries {
			if e.Source == SourceAuthority {
				delete(entries, name)
				n++
			}
		}
		return nil
	})
	return n, err
}

// Get returns an application's entry, expired or not.
func (s *Store) Get(name string) (*Entry, bool) {
	e, ok := s.cur.Load().entries[name]
	return e, ok
}

// Entries lists all entries sorted by name.
func (s *Store) Entries() []*Entry {
	snap := s.cur.Load()
	out := make([]*Entry, 0, len(snap.entries))
	for _, e := range snap.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].App.Name < out[j].App.Name })
	return out
}

// Resolve finds the application of a URL among the stored ones, without
// looking at expiry (the Catalog does).
func (s *Store) Resolve(rawURL string) (Resolution, *Entry, error) {
	snap := s.cur.Load()
	r, err := snap.index.Resolve(rawURL)
	if err != nil {
		return Resolution{}, nil, err
	}
	return r, snap.entries[r.App.Name], nil
}

// NextVersion returns the next bundle version of an application: strictly
// increasing across restarts, so that the update daemon can refuse a bundle
// older than the one it applied.
func (s *Store) NextVersion(app string) (uint64, error) {
	var v uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		key := []byte("version/" + app)
		if old := meta.Get(key); len(old) == 8 {
			v = binary.BigEndian.Uint64(old)
		}
		v++
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], v)
		return meta.Put(key, buf[:])
	})
	return v, err
}
