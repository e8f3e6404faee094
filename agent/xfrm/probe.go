package xfrm

import (
	"fmt"
	"net/netip"
	"runtime"

	"github.com/vishvananda/netns"
)

// ProbeESP adds an ESP SA with AES-GCM, the cipher the policy store's
// bundles use, in a throwaway network namespace: nil when this kernel can
// hold labeled tunnels, else why not (errors.Is ErrNoESP or
// ErrNoAlgorithm on kernels without them). Root only.
func ProbeESP() error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread ends in the throwaway namespace and dies with it
		ns, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		defer ns.Close()
		h, err := NewHandle()
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		errc <- h.AddState(State{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), SPI: 0x1000, Proto: ProtoESP,
			Mode: ModeTransport, AEAD: &Algo{Name: "rfc4106(gcm(aes))", Key: make([]byte, 20), ICVBits: 128}})
	}()
	return <-errc
}
