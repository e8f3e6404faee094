package agent

import (
	"iter"
	"net/netip"
)

// kernelTable holds the kernel's ESP SAs (the only ones the fast path
// sees) in about 80 bytes each rather than a KernelSA's 160 in a map:
// addresses as 16 bytes and a family, the SELinux context as an index into
// a table of the distinct contexts (a host has as many as it has labels,
// not as SAs). At 100,000 SAs it was most of the agent's heap. The reqid
// is not kept: nothing the agent decides depends on it.
type kernelTable struct {
	sas    map[kkey]krec
	ctxs   []string
	ctxRef []uint32
	ctxIdx map[string]uint32
	free   []uint32
}

type caddr struct {
	a   [16]byte
	fam uint8 // 0: unset, 4, 6
}

func compact(a netip.Addr) caddr {
	switch {
	case !a.IsValid():
		return caddr{}
	case a.Is4():
		b := a.As4()
		var c caddr
		copy(c.a[:], b[:])
		c.fam = 4
		return c
	default:
		return caddr{a: a.As16(), fam: 6}
	}
}

func (c caddr) addr() netip.Addr {
	switch c.fam {
	case 4:
		return netip.AddrFrom4([4]byte(c.a[:4]))
	case 6:
		return netip.AddrFrom16(c.a)
	}
	return netip.Addr{}
}

type kkey struct {
	spi uint32
	dst caddr
}

type krec struct {
	src, selSrc, selDst caddr
	ctx                 uint32 // index+1 into ctxs; 0: unlabeled
}

// saSeq is how policyFor and the rotation checks read the kernel's SAs.
type saSeq = iter.Seq2[saID, KernelSA]

// noSAs is the empty saSeq.
func noSAs(func(saID, KernelSA) bool) {}

func newKernelTable() *kernelTable {
	return &kernelTable{sas: map[kkey]krec{}, ctxIdx: map[string]uint32{}}
}

func keyOf(id saID) kkey { return kkey{id.spi, compact(id.dst)} }

func (t *kernelTable) len() int { return len(t.sas) }

func (t *kernelTable) ctxRefInc(s string) uint32 {
	if s == "" {
		return 0
	}
	i, ok := t.ctxIdx[s]
	if !ok {
		if n := len(t.free); n > 0 {
			i, t.free = t.free[n-1], t.free[:n-1]
			t.ctxs[i-1] = s
		} else {
			t.ctxs = append(t.ctxs, s)
			t.ctxRef = append(t.ctxRef, 0)
			i = uint32(len(t.ctxs))
		}
		t.ctxIdx[s] = i
	}
	t.ctxRef[i-1]++
	return i
}

func (t *kernelTable) ctxRefDec(i uint32) {
	if i == 0 {
		return
	}
	t.ctxRef[i-1]--
	if t.ctxRef[i-1] == 0 {
		delete(t.ctxIdx, t.ctxs[i-1])
		t.ctxs[i-1] = ""
		t.free = append(t.free, i)
	}
}

// set stores k (an ESP SA; others are ignored) and reports whether it
// differs from what was stored under its SPI and destination.
func (t *kernelTable) set(k KernelSA) bool {
	if k.Proto != 50 {
		return false
	}
	key := kkey{k.SPI, compact(k.Dst)}
	old, had := t.sas[key]
	if had && t.same(old, &k) {
		return false
	}
	r := krec{src: compact(k.Src), selSrc: compact(k.SelSrc), selDst: compact(k.SelDst), ctx: t.ctxRefInc(k.Context)}
	if had {
		t.ctxRefDec(old.ctx)
	}
	t.sas[key] = r
	return true
}

func (t *kernelTable) same(r krec, k *KernelSA) bool {
	return r.src == compact(k.Src) && r.selSrc == compact(k.SelSrc) && r.selDst == compact(k.SelDst) && t.context(r.ctx) == k.Context
}

// del removes the SA with id, and reports whether there was one.
func (t *kernelTable) del(id saID) bool {
	if id.proto != 50 {
		return false
	}
	key := keyOf(id)
	r, ok := t.sas[key]
	if ok {
		t.ctxRefDec(r.ctx)
		delete(t.sas, key)
	}
	return ok
}

func (t *kernelTable) context(i uint32) string {
	if i == 0 {
		return ""
	}
	return t.ctxs[i-1]
}

func (t *kernelTable) sa(k kkey, r krec) KernelSA {
	return KernelSA{Src: r.src.addr(), Dst: k.dst.addr(), SPI: k.spi, Proto: 50, Context: t.context(r.ctx), SelSrc: r.selSrc.addr(), SelDst: r.selDst.addr()}
}

// get is the ESP SA at (spi, dst).
func (t *kernelTable) get(spi uint32, dst netip.Addr) (KernelSA, bool) {
	k := kkey{spi, compact(dst)}
	r, ok := t.sas[k]
	if !ok {
		return KernelSA{}, false
	}
	return t.sa(k, r), true
}

// all ranges over the SAs as KernelSAs (the form policyFor and the
// rotation checks read).
func (t *kernelTable) all() saSeq {
	return func(yield func(saID, KernelSA) bool) {
		for k, r := range t.sas {
			s := t.sa(k, r)
			if !yield(saID{s.Dst, s.SPI, 50}, s) {
				return
			}
		}
	}
}
