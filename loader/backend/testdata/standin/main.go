// Command standin takes the place of `mlsgate updated` in the backend tests
// until the real update daemon exists: it accepts the same flags, serves TLS
// with the credentials the backend delivered (so a test can check they
// arrived intact) and greets each client with one line:
//
//	standin <listen> key-mode=<octal mode of the key file>
//
// Test-only flags: --mute never listens (a daemon that never answers), and
// --ignore-term ignores SIGTERM (a daemon only SIGKILL stops). In a guest,
// whose init passes fixed flags, the word standin.mute on the kernel
// command line does what --mute does.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) < 2 || os.Args[1] != "updated" {
		return errors.New("usage: standin updated --listen HOST:PORT --cert F --key F --ca F --crl F --state-dir D")
	}
	fs := flag.NewFlagSet("updated", flag.ContinueOnError)
	listen := fs.String("listen", "", "host:port")
	certF := fs.String("cert", "", "certificate")
	keyF := fs.String("key", "", "key")
	caF := fs.String("ca", "", "CA certificate")
	crlF := fs.String("crl", "", "the CA's CRL (required, as the real daemon is always started)")
	state := fs.String("state-dir", "", "state directory")
	mute := fs.Bool("mute", false, "never listen")
	ignoreTerm := fs.Bool("ignore-term", false, "ignore SIGTERM")
	fs.Bool("semodule", false, "accepted as the real daemon does; the stand-in installs nothing")
	config := fs.String("config", "-", `configuration file; the backends pass "" (none)`)
	if err := fs.Parse(os.Args[2:]); err != nil {
		return err
	}
	if *config != "" {
		return fmt.Errorf("--config %q: the backends start the daemon with --config \"\", so that no host or image file sets it", *config)
	}
	if _, err := os.ReadFile(*crlF); err != nil {
		return fmt.Errorf("--crl: %w", err)
	}
	if cmdline, err := os.ReadFile("/proc/cmdline"); err == nil && slices.Contains(strings.Fields(string(cmdline)), "standin.mute") {
		*mute = true
	}
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	fmt.Printf("standin: pid %d listen %s state %s\n", os.Getpid(), *listen, *state)
	if *mute {
		for {
			time.Sleep(time.Hour)
		}
	}
	if *state != "" {
		if err := os.MkdirAll(*state, 0o700); err != nil {
			return err
		}
	}
	cert, err := tls.LoadX509KeyPair(*certF, *keyF)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(*caF)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("%s holds no certificate", *caF)
	}
	fi, err := os.Stat(*keyF)
	if err != nil {
		return err
	}
	greeting := fmt.Sprintf("standin %s key-mode=%#o\n", *listen, fi.Mode().Perm())
	ln, err := tls.Listen("tcp", *listen, &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.VerifyClientCertIfGiven,
	})
	if err != nil {
		return err
	}
	fmt.Printf("standin: listening on %s\n", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func(c net.Conn) {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte(greeting)) // a plain TCP probe fails the handshake here; fine
		}(c)
	}
}
