package agent

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/mlsgate/mlsgate/policystore/secretfile"
)

// The desired state on disk is desired.json plus a journal of the guest
// declarations and removals made since it was last written whole. A
// declaration appends one record and syncs it (O(1) in the number of
// guests) instead of rewriting and syncing all of desired.json (O(guests),
// so O(guests²) for guests declared one at a time). The journal is folded
// into desired.json (compacted) when it outgrows it, at start, and by every
// other change of the desired state (peers, static SAs, rotations), which
// is rare and writes desired.json whole as before.
//
// A record is one line: the CRC-32C of its JSON in 8 hex digits, a space,
// the JSON ({"set": guest} or {"remove": interface}), a newline. A change
// is acknowledged only once its record is synced, and records are only
// appended, so a crash can tear the last record alone: a last line without
// its newline or with a wrong checksum is ignored (that change was never
// acknowledged). A bad record before the last is damage, not a crash, and
// the agent refuses to start on it rather than drop what it acknowledged.
//
// Replaying a journal is idempotent (each record sets or removes one
// interface's guest outright), so a crash between writing desired.json and
// emptying the journal replays records desired.json already holds, with
// the same result.

const journalFile = "desired.journal"

// journalMin: the journal is compacted when it outgrows both this and
// desired.json itself, so compaction costs O(1) per record amortized. A
// variable for the tests.
var journalMin int64 = 256 << 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// journalOp is one record of the journal.
type journalOp struct {
	Set    *GuestSpec `json:"set,omitempty"`
	Remove string     `json:"remove,omitempty"`
}

func (op journalOp) apply(d *Desired) {
	if op.Set != nil {
		setGuest(*op.Set)(d)
		return
	}
	var found bool
	removeGuest(op.Remove, &found)(d)
}

// desiredStore writes the desired state: desired.json and its journal.
type desiredStore struct {
	dir       string
	journal   *os.File // O_APPEND
	size      int64    // of the journal
	baseBytes int64    // of desired.json when last written
	// written: bytes written to both files since open (the tests bound
	// it by the state's size times a constant).
	written int64
	// emptyErr: why the last saveAll could not empty the journal.
	emptyErr error
}

// openDesired reads the desired state (desired.json with its journal
// replayed), folds the journal into desired.json when it holds records
// (or a torn one), and opens the journal for appending. The state
// directory and both files get the checks of loadDesired.
func openDesired(dir string) (Desired, *desiredStore, error) {
	d, err := loadDesired(dir)
	if err != nil {
		return d, nil, err
	}
	sd, err := secretfile.Open(dir)
	if err != nil {
		return d, nil, fmt.Errorf("state_dir: %w", err)
	}
	defer sd.Close()
	jpath := filepath.Join(dir, journalFile)
	b, err := sd.ReadFile(journalFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return d, nil, fmt.Errorf("state_dir: %w", err)
	}
	ops, err := parseJournal(b)
	if err != nil {
		return d, nil, fmt.Errorf("%s: %w (desired.json holds the state before these records; move the journal away to start from it)", jpath, err)
	}
	for _, op := range ops {
		op.apply(&d)
	}
	d.sort()
	if err := d.Validate(); err != nil {
		return d, nil, fmt.Errorf("%s replayed on %s: %w", jpath, desiredFile, err)
	}
	s := &desiredStore{dir: dir}
	if err := s.openJournal(sd); err != nil {
		return d, nil, err
	}
	if len(b) > 0 {
		if err := s.saveAll(d); err != nil {
			s.close()
			return d, nil, fmt.Errorf("save desired state: %w", err)
		}
	} else if fi, err := sd.Lstat(desiredFile); err == nil {
		s.baseBytes = fi.Size()
	}
	return d, s, nil
}

// parseJournal decodes the records; a torn last one is left out.
func parseJournal(b []byte) ([]journalOp, error) {
	var ops []journalOp
	for n := 1; len(b) > 0; n++ {
		line, rest, complete := bytes.Cut(b, []byte{'\n'})
		op, err := parseRecord(line)
		if err != nil || !complete {
			if len(rest) == 0 {
				break // the last record, torn by a crash: never acknowledged
			}
			return nil, fmt.Errorf("record %d: %w", n, err)
		}
		ops = append(ops, op)
		b = rest
	}
	return ops, nil
}

func parseRecord(line []byte) (journalOp, error) {
	var op journalOp
	sum, body, ok := bytes.Cut(line, []byte{' '})
	var want [4]byte
	if !ok || len(sum) != 8 {
		return op, errors.New("no checksum")
	}
	if _, err := hex.Decode(want[:], sum); err != nil {
		return op, errors.New("no checksum")
	}
	if crc32.Checksum(body, castagnoli) != uint32(want[0])<<24|uint32(want[1])<<16|uint32(want[2])<<8|uint32(want[3]) {
		return op, errors.New("checksum mismatch")
	}
	if err := json.Unmarshal(body, &op); err != nil {
		return op, err
	}
	if (op.Set == nil) == (op.Remove == "") {
		return op, errors.New("want one of set and remove")
	}
	return op, nil
}

func appendRecord(buf []byte, op journalOp) ([]byte, error) {
	body, err := json.Marshal(op)
	if err != nil {
		return nil, err
	}
	buf = fmt.Appendf(buf, "%08x ", crc32.Checksum(body, castagnoli))
	buf = append(buf, body...)
	return append(buf, '\n'), nil
}

// openJournal opens (creating it if missing, with the directory synced so
// that its entry survives a crash) the journal for appending: a regular
// file of ours that others cannot write, never a symbolic link.
func (s *desiredStore) openJournal(sd *secretfile.Dir) error {
	f, err := sd.OpenAppend(journalFile)
	if err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	s.journal, s.size = f, fi.Size()
	return nil
}

// appendOp makes one guest change durable: its record appended and
// synced. Once it returns nil the change is acknowledged. When it returns
// an error the journal is as before (or, when even that is unknown, the
// next change writes the state whole).
func (s *desiredStore) appendOp(op journalOp) error {
	rec, err := appendRecord(nil, op)
	if err != nil {
		return err
	}
	if _, err := s.journal.Write(rec); err != nil {
		return s.fail(err)
	}
	if err := unix.Fdatasync(int(s.journal.Fd())); err != nil {
		return s.fail(err)
	}
	s.size += int64(len(rec))
	s.written += int64(len(rec))
	return nil
}

// compactDue: the journal has outgrown desired.json (saveAll is due).
func (s *desiredStore) compactDue() bool {
	return s.size > max(journalMin, s.baseBytes)
}

// fail: a write of the journal failed, and its tail may hold part of the
// record. It is cut back to the last whole record; when that fails too,
// the next change first writes the state whole and empties the journal
// (ready).
func (s *desiredStore) fail(err error) error {
	if terr := s.journal.Truncate(s.size); terr != nil {
		s.size = -1
	}
	return fmt.Errorf("append to %s: %w", filepath.Join(s.dir, journalFile), err)
}

// saveAll writes d whole to desired.json, then empties the journal. d
// holds every change the journal records (guests change only through the
// journal), so once desired.json is replaced d is durable: an error
// means it is not. A journal that cannot be emptied then is harmless on
// replay (idempotent) but may end in a torn record, so no record is
// appended to it (size -1) until a later saveAll empties it: emptyErr
// says why it could not.
func (s *desiredStore) saveAll(d Desired) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	sd, err := secretfile.Open(s.dir)
	if err != nil {
		return err
	}
	defer sd.Close()
	if err := sd.Replace(desiredFile, b, secretfile.FileMode); err != nil {
		return err
	}
	s.baseBytes = int64(len(b))
	s.written += int64(len(b))
	s.size, s.emptyErr = 0, nil
	if err := s.journal.Truncate(0); err != nil {
		s.size, s.emptyErr = -1, fmt.Errorf("empty %s: %w", filepath.Join(s.dir, journalFile), err)
	} else if err := s.journal.Sync(); err != nil {
		s.size, s.emptyErr = -1, fmt.Errorf("empty %s: %w", filepath.Join(s.dir, journalFile), err)
	}
	return nil
}

// ready makes the journal safe to append to: after a failed append or a
// failed emptying, d (the state so far, without the change about to be
// appended) is written whole and the journal emptied first.
func (s *desiredStore) ready(d Desired) error {
	if s.size >= 0 {
		return nil
	}
	if err := s.saveAll(d); err != nil {
		return err
	}
	return s.emptyErr
}

func (s *desiredStore) close() error {
	if s == nil || s.journal == nil {
		return nil
	}
	return s.journal.Close()
}
