package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestOpenCreatesRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	clk := newClock()
	c := openCA(t, dir, Options{CommonName: "test root", Now: clk.Now})

	cert := c.Certificate()
	if cert.Subject.CommonName != "test root" {
		t.Errorf("CN = %q, want %q", cert.Subject.CommonName, "test root")
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.MaxPathLen != 0 || !cert.MaxPathLenZero {
		t.Errorf("basic constraints: IsCA=%v valid=%v MaxPathLen=%d zero=%v; want a CA with path length 0",
			cert.IsCA, cert.BasicConstraintsValid, cert.MaxPathLen, cert.MaxPathLenZero)
	}
	if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign; cert.KeyUsage != want {
		t.Errorf("KeyUsage = %v, want %v", cert.KeyUsage, want)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", cert.PublicKey)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if d := cert.NotAfter.Sub(clk.Now()); d < DefaultValidity-time.Minute || d > DefaultValidity {
		t.Errorf("validity ends %s after now, want about %s", d, DefaultValidity)
	}

	for name, want := range map[string]os.FileMode{"": 0o700, certFile: 0o644, keyFile: 0o600, issuedDir: 0o700, revokedDir: 0o700} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %#o, want %#o", filepath.Join(dir, name), st.Mode().Perm(), want)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		t.Fatal(err)
	}
	if block, _ := pem.Decode(b); block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("%s is not a PKCS#8 PEM key", keyFile)
	} else if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		t.Fatalf("%s: %v", keyFile, err)
	}
	if !bytes.Equal(c.CertPEM(), mustRead(t, filepath.Join(dir, certFile))) {
		t.Errorf("CertPEM differs from %s", certFile)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReopenRoundTrip(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := issue(t, c, guestReq())
	s := issue(t, c, serverReq())
	cl := issue(t, c, clientReq())
	if err := c.Revoke(s.Serial, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CRL(); err != nil {
		t.Fatal(err)
	}
	before := c.Issued()
	rootBefore := c.Certificate().Raw
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// Options that differ from the stored CA are ignored on reopening.
	c2 := openCA(t, dir, Options{CommonName: "another name", Validity: time.Hour})
	if !bytes.Equal(c2.Certificate().Raw, rootBefore) {
		t.Fatal("reopened CA has a different certificate")
	}
	after := c2.Issued()
	if len(after) != 3 || len(before) != 3 {
		t.Fatalf("records: %d before, %d after reopening; want 3", len(before), len(after))
	}
	for i := range before {
		b, a := before[i], after[i]
		if b.Serial.Cmp(a.Serial) != 0 || b.Kind != a.Kind || b.CommonName != a.CommonName ||
			!slices.Equal(b.DNSNames, a.DNSNames) || fmt.Sprint(b.IPs) != fmt.Sprint(a.IPs) ||
			!b.NotBefore.Equal(a.NotBefore) || !b.NotAfter.Equal(a.NotAfter) ||
			b.Revoked != a.Revoked || !b.RevokedAt.Equal(a.RevokedAt) || b.Reason != a.Reason {
			t.Errorf("record %d changed:\nbefore %+v\nafter  %+v", i, b, a)
		}
	}
	if !c2.Revoked(s.Serial) || c2.Revoked(g.Serial) || c2.Revoked(cl.Serial) {
		t.Error("revocations not restored")
	}
	// Certificates issued before the restart verify against the reopened CA.
	if err := c2.Verify(g.Cert, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("Verify after reopening: %v", err)
	}
	if err := c2.Verify(s.Cert, x509.ExtKeyUsageServerAuth); !errors.Is(err, ErrRevoked) {
		t.Errorf("Verify of revoked cert after reopening: %v, want ErrRevoked", err)
	}
}

// writeFile overwrites a file in a test, keeping the given mode.
func writeFile(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestOpenDamagedFiles(t *testing.T) {
	otherKey := func(t *testing.T) []byte {
		other := openCA(t, t.TempDir(), Options{})
		return mustRead(t, filepath.Join(other.Dir(), keyFile))
	}
	cases := map[string]struct {
		damage func(t *testing.T, dir string, iss *Issued)
		want   []string // substrings of the error; SERIAL stands for the issued serial
	}{
		"key missing": {
			func(t *testing.T, dir string, _ *Issued) { os.Remove(filepath.Join(dir, keyFile)) },
			[]string{keyFile, "is missing", "restore the key from backup"},
		},
		"key garbage": {
			func(t *testing.T, dir string, _ *Issued) {
				writeFile(t, filepath.Join(dir, keyFile), []byte("not a key\n"), 0o600)
			},
			[]string{keyFile, "PRIVATE KEY", "restore it from backup"},
		},
		"key truncated": {
			func(t *testing.T, dir string, _ *Issued) {
				b := mustRead(t, filepath.Join(dir, keyFile))
				block, _ := pem.Decode(b)
				block.Bytes = block.Bytes[:len(block.Bytes)/2]
				writeFile(t, filepath.Join(dir, keyFile), pem.EncodeToMemory(block), 0o600)
			},
			[]string{keyFile, "restore it from backup"},
		},
		"key of another CA": {
			func(t *testing.T, dir string, _ *Issued) {
				writeFile(t, filepath.Join(dir, keyFile), otherKey(t), 0o600)
			},
			[]string{keyFile, "does not match", certFile},
		},
		"key readable by others": {
			func(t *testing.T, dir string, _ *Issued) { os.Chmod(filepath.Join(dir, keyFile), 0o644) },
			[]string{keyFile, "chmod 600"},
		},
		"cert garbage": {
			func(t *testing.T, dir string, _ *Issued) {
				writeFile(t, filepath.Join(dir, certFile), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), 0o644)
			},
			[]string{certFile, "restore it from backup"},
		},
		"cert missing with records": {
			func(t *testing.T, dir string, _ *Issued) { os.Remove(filepath.Join(dir, certFile)) },
			[]string{certFile, "is missing", "restore"},
		},
		"both missing with records": {
			func(t *testing.T, dir string, _ *Issued) {
				os.Remove(filepath.Join(dir, certFile))
				os.Remove(filepath.Join(dir, keyFile))
			},
			[]string{"holds issued records", "restore both"},
		},
		"record garbage": {
			func(t *testing.T, dir string, iss *Issued) {
				writeFile(t, filepath.Join(dir, issuedDir, serialName(iss.Serial)+".pem"), []byte("half a cert"), 0o644)
			},
			[]string{filepath.Join(issuedDir, "SERIAL"), "restore it from backup"},
		},
		"record renamed": {
			func(t *testing.T, dir string, iss *Issued) {
				os.Rename(filepath.Join(dir, issuedDir, serialName(iss.Serial)+".pem"), filepath.Join(dir, issuedDir, "abc.pem"))
			},
			[]string{filepath.Join(issuedDir, "abc.pem"), "rename it to " + "SERIAL" + ".pem"},
		},
		"revocation garbage": {
			func(t *testing.T, dir string, iss *Issued) {
				writeFile(t, filepath.Join(dir, revokedDir, serialName(iss.Serial)+".json"), []byte(`{"serial":`), 0o644)
			},
			[]string{filepath.Join(revokedDir, "SERIAL"+".json"), "do not delete it"},
		},
		"crl number garbage": {
			func(t *testing.T, dir string, _ *Issued) {
				writeFile(t, filepath.Join(dir, crlNumberFile), []byte("seven\n"), 0o644)
			},
			[]string{crlNumberFile, "decimal number"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			c, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			iss := issue(t, c, guestReq())
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, dir, iss)
			snap := make(map[string][]byte)
			for _, f := range []string{certFile, keyFile} {
				if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
					snap[f] = b
				}
			}
			c2, err := Open(dir, Options{})
			if err == nil {
				c2.Close()
				t.Fatal("Open succeeded on a damaged directory")
			}
			for _, w := range tc.want {
				w = strings.ReplaceAll(w, "SERIAL", serialName(iss.Serial))
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			// Open replaced nothing: the CA files are as the damage left them.
			for _, f := range []string{certFile, keyFile} {
				if _, ok := snap[f]; ok != exists(filepath.Join(dir, f)) {
					t.Errorf("%s appeared or vanished during the failed Open", f)
				} else if ok && !bytes.Equal(snap[f], mustRead(t, filepath.Join(dir, f))) {
					t.Errorf("%s was rewritten during the failed Open", f)
				}
			}
		})
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	cases := map[string]struct {
		opts Options
		want string
	}{
		"negative validity":     {Options{Validity: -time.Hour}, "Options.Validity"},
		"negative CRL validity": {Options{CRLValidity: -time.Hour}, "Options.CRLValidity"},
		"control char in CN":    {Options{CommonName: "root\n"}, "Options.CommonName"},
		"long CN":               {Options{CommonName: strings.Repeat("x", 65)}, "Options.CommonName"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ca")
			_, err := Open(dir, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open: %v, want an error naming %s", err, tc.want)
			}
			if exists(dir) {
				t.Errorf("Open created %s despite bad options", dir)
			}
		})
	}
	if _, err := Open("", Options{}); err == nil {
		t.Error("Open(\"\") succeeded")
	}
}

func TestOpenIgnoresLeftoverTemporaries(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	iss := issue(t, c, guestReq())
	if _, err := c.CRL(); err != nil {
		t.Fatal(err)
	}
	root := c.Certificate().Raw
	c.Close()

	// What a crash in the middle of writeFileAtomic leaves: a temporary
	// next to the file it was to replace, half written.
	leftovers := []string{
		filepath.Join(dir, tempPrefix+certFile+"-123"),
		filepath.Join(dir, tempPrefix+keyFile+"-456"),
		filepath.Join(dir, tempPrefix+crlNumberFile+"-789"),
		filepath.Join(dir, issuedDir, tempPrefix+"0abc.pem-1"),
		filepath.Join(dir, revokedDir, tempPrefix+serialName(iss.Serial)+".json-2"),
	}
	for _, p := range leftovers {
		writeFile(t, p, []byte("-----BEGIN CERT"), 0o600)
	}

	c2 := openCA(t, dir, Options{})
	if !bytes.Equal(c2.Certificate().Raw, root) {
		t.Error("CA changed")
	}
	if recs := c2.Issued(); len(recs) != 1 || recs[0].Serial.Cmp(iss.Serial) != 0 {
		t.Errorf("records after reopening: %+v", recs)
	}
	if c2.Revoked(iss.Serial) {
		t.Error("half-written revocation was taken as a revocation")
	}
	for _, p := range leftovers {
		if exists(p) {
			t.Errorf("leftover %s not removed", p)
		}
	}
	// The CRL number continues from the last completed write.
	crl := parseCRL(t, c2, mustCRL(t, c2))
	if crl.Number.Int64() != 2 {
		t.Errorf("CRL number %v, want 2", crl.Number)
	}
}

func TestOpenFinishesInterruptedCreation(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, Options{CommonName: "first"})
	if err != nil {
		t.Fatal(err)
	}
	key := mustRead(t, filepath.Join(dir, keyFile))
	c.Close()
	// A crash between writing the key and the certificate.
	if err := os.Remove(filepath.Join(dir, certFile)); err != nil {
		t.Fatal(err)
	}
	c2 := openCA(t, dir, Options{CommonName: "second"})
	if !bytes.Equal(mustRead(t, filepath.Join(dir, keyFile)), key) {
		t.Error("the key was replaced; it must be kept")
	}
	if c2.Certificate().Subject.CommonName != "second" {
		t.Errorf("CN %q", c2.Certificate().Subject.CommonName)
	}
	issue(t, c2, clientReq())
}

func TestOpenLocksDirectory(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, Options{})
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open: %v, want ErrInUse", err)
	}
	if want := "pid " + strconv.Itoa(os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the holder (%s)", err, want)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Issue(clientReq()); !errors.Is(err, ErrClosed) {
		t.Errorf("Issue after Close: %v, want ErrClosed", err)
	}
	c2 := openCA(t, dir, Options{})
	issue(t, c2, clientReq())
}

func TestLockExcl(t *testing.T) {
	dir := t.TempDir()
	release, err := lockExcl(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockExcl(dir)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) ||
		!strings.Contains(err.Error(), "remove "+filepath.Join(dir, lockName)) {
		t.Fatalf("second lockExcl: %v", err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	release, err = lockExcl(dir)
	if err != nil {
		t.Fatalf("lockExcl after release: %v", err)
	}
	release()
}

func TestConcurrentIssue(t *testing.T) {
	dir := t.TempDir()
	c := openCA(t, dir, Options{})
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			req := clientReq()
			req.CommonName = fmt.Sprintf("client %d", i)
			iss, err := c.Issue(req)
			if err == nil && i%4 == 0 {
				err = c.Revoke(iss.Serial, ReasonSuperseded)
			}
			if err == nil && i%8 == 0 {
				_, err = c.CRL()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	c.Close()
	c2 := openCA(t, dir, Options{})
	recs := c2.Issued()
	revoked := 0
	for _, r := range recs {
		if r.Revoked {
			revoked++
		}
	}
	if len(recs) != n || revoked != n/4 {
		t.Errorf("%d records, %d revoked; want %d and %d", len(recs), revoked, n, n/4)
	}
	if crl := parseCRL(t, c2, mustCRL(t, c2)); crl.Number.Int64() != n/8+1 {
		t.Errorf("CRL number %v, want %d", crl.Number, n/8+1)
	}
}
