package pool

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// The table is kept in a bbolt file, one record per entry keyed by the
// entry's ID. bbolt rather than a JSON file rewritten on each change:
//
//   - a change is one keyed put in a transaction that is fsynced on commit,
//     so the cost of a change does not grow with the table, and a crash
//     leaves either the old record or the new one;
//   - the slot counter is the bucket's sequence, committed in the same
//     transaction as the placeholder it numbers;
//   - bbolt takes an exclusive lock on the file, so a second agent opening
//     the same pool fails at once instead of handing out the same idle
//     guest as the first (an atomically renamed JSON file would need a
//     lock file of its own for that);
//   - the policy store already keeps its state this way, so operators and
//     tools meet one format.
//
// Records are JSON, so `bbolt get` shows them readably.
var (
	bucketEntries = []byte("entries")
	bucketMeta    = []byte("meta")
	keySchema     = []byte("schema")
	schemaV1      = []byte("1")
)

// ErrLocked is returned by Open when another process holds the pool file.
var ErrLocked = errors.New("pool file is in use by another process")

type store struct {
	db *bolt.DB
}

func openStore(path string) (*store, error) {
	if path == "" {
		return nil, errors.New("pool: empty path; pass the pool file, e.g. /var/lib/mlsgate/pool.db")
	}
	// The pool lists guests and their keys' whereabouts: a 0600 file in
	// a directory only this uid can write, never a planted file or link.
	if err := secretfile.PrepareFile(path); err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s is locked; stop the other mlsgate agent or give this one another pool file", ErrLocked, path)
		}
		return nil, fmt.Errorf("open pool file %s: %w (if it is damaged, move it away and destroy the guests it listed by hand)", path, err)
	}
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
			return fmt.Errorf("pool file %s has schema %q; this mlsgate reads schema %q", path, v, schemaV1)
		}
		_, err = tx.CreateBucketIfNotExists(bucketEntries)
		return err
	})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &store{db: db}, nil
}

func key(id uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, id)
}

// load reads every entry.
func (s *store) load() ([]Entry, error) {
	var out []Entry
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEntries).ForEach(func(k, v []byte) error {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("pool record %x: %w", k, err)
			}
			if len(k) != 8 || binary.BigEndian.Uint64(k) != e.ID {
				return fmt.Errorf("pool record %x holds entry %d; the file is damaged", k, e.ID)
			}
			if e.State == 0 {
				return fmt.Errorf("pool record %d has no state; the file is damaged", e.ID)
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

// insert numbers e from the bucket's sequence and stores it, in one
// transaction, and returns the number.
func (s *store) insert(e Entry) (uint64, error) {
	var id uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		n, err := b.NextSequence()
		if err != nil {
			return err
		}
		e.ID = n
		v, err := json.Marshal(e)
		if err != nil {
			return err
		}
		id = n
		return b.Put(key(n), v)
	})
	return id, err
}

// apply writes the puts and deletes in one transaction.
func (s *store) apply(put []Entry, del []uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEntries)
		for _, e := range put {
			v, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := b.Put(key(e.ID), v); err != nil {
				return err
			}
		}
		for _, id := range del {
			if err := b.Delete(key(id)); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *store) close() error { return s.db.Close() }
