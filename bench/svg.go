package bench

import (
	"fmt"
	"html"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// Plots are written by hand as SVG 1.1: no dependency, and the files open
// in a browser and in the Markdown report.

const (
	svgW, svgH                         = 760, 440
	svgLeft, svgRight, svgTop, svgBott = 80, 220, 40, 60
)

var svgColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"}

// svgPoint is one measurement; Floor says the value was at or below the
// plot's floor (noise around zero) and is drawn there, hollow.
type svgPoint struct {
	X, Y  float64
	Floor bool
}

type svgSeries struct {
	Name   string
	Dashed bool
	Points []svgPoint
}

type svgDoc struct{ b strings.Builder }

func (d *svgDoc) open(title string) {
	fmt.Fprintf(&d.b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgW, svgH, svgW, svgH)
	fmt.Fprintf(&d.b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	d.text(svgW/2, 22, "middle", 15, title)
}

func (d *svgDoc) text(x, y float64, anchor string, size int, s string) {
	fmt.Fprintf(&d.b, `<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%d">%s</text>`+"\n", x, y, anchor, size, html.EscapeString(s))
}

func (d *svgDoc) line(x1, y1, x2, y2 float64, stroke string, width float64) {
	fmt.Fprintf(&d.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"/>`+"\n", x1, y1, x2, y2, stroke, width)
}

func (d *svgDoc) close() string {
	d.b.WriteString("</svg>\n")
	return d.b.String()
}

// logAxis maps [lo, hi] (decades) onto [p0, p1] pixels.
type logAxis struct {
	lo, hi int // powers of ten
	p0, p1 float64
}

func newLogAxis(vals []float64, p0, p1 float64) logAxis {
	a := logAxis{lo: 0, hi: 1, p0: p0, p1: p1}
	if len(vals) == 0 {
		return a
	}
	a.lo = int(math.Floor(math.Log10(slices.Min(vals))))
	a.hi = int(math.Ceil(math.Log10(slices.Max(vals))))
	if a.hi <= a.lo {
		a.hi = a.lo + 1
	}
	return a
}

func (a logAxis) pos(v float64) float64 {
	return a.p0 + (math.Log10(v)-float64(a.lo))/float64(a.hi-a.lo)*(a.p1-a.p0)
}

// decade labels: 10, 1k, 1M, ... and ns/µs/ms for times.
func countLabel(p int) string {
	switch {
	case p >= 6:
		return fmt.Sprintf("%gM", math.Pow10(p-6))
	case p >= 3:
		return fmt.Sprintf("%gk", math.Pow10(p-3))
	}
	return fmt.Sprintf("%g", math.Pow10(p))
}

func nsLabel(p int) string {
	return time.Duration(math.Pow10(p)).String()
}

// logLogPlot draws series on log-scale x and y axes with a legend.
func logLogPlot(title, xTitle, yTitle, note string, series []svgSeries) string {
	var xs, ys []float64
	for _, s := range series {
		for _, p := range s.Points {
			xs, ys = append(xs, p.X), append(ys, p.Y)
		}
	}
	x := newLogAxis(xs, svgLeft, svgW-svgRight)
	y := newLogAxis(ys, svgH-svgBott, svgTop)
	var d svgDoc
	d.open(title)
	for p := x.lo; p <= x.hi; p++ {
		px := x.pos(math.Pow10(p))
		d.line(px, svgTop, px, svgH-svgBott, "#dddddd", 1)
		d.text(px, svgH-svgBott+16, "middle", 11, countLabel(p))
	}
	for p := y.lo; p <= y.hi; p++ {
		py := y.pos(math.Pow10(p))
		d.line(svgLeft, py, svgW-svgRight, py, "#dddddd", 1)
		d.text(svgLeft-6, py+4, "end", 11, nsLabel(p))
	}
	d.line(svgLeft, svgH-svgBott, svgW-svgRight, svgH-svgBott, "black", 1)
	d.line(svgLeft, svgTop, svgLeft, svgH-svgBott, "black", 1)
	d.text((svgLeft+svgW-svgRight)/2, svgH-svgBott+36, "middle", 12, xTitle)
	fmt.Fprintf(&d.b, `<text x="18" y="%.1f" text-anchor="middle" transform="rotate(-90 18 %.1f)">%s</text>`+"\n",
		float64(svgTop+svgH-svgBott)/2, float64(svgTop+svgH-svgBott)/2, html.EscapeString(yTitle))
	if note != "" {
		d.text(svgLeft, svgH-8, "start", 10, note)
	}
	for i, s := range series {
		color := svgColors[i%len(svgColors)]
		var pts []string
		for _, p := range s.Points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x.pos(p.X), y.pos(p.Y)))
		}
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="6 4"`
		}
		if len(pts) > 1 {
			fmt.Fprintf(&d.b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", color, dash, strings.Join(pts, " "))
		}
		for _, p := range s.Points {
			fill := color
			if p.Floor {
				fill = "white"
			}
			fmt.Fprintf(&d.b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s" stroke="%s"><title>%s: %g → %.0f ns</title></circle>`+"\n",
				x.pos(p.X), y.pos(p.Y), fill, color, html.EscapeString(s.Name), p.X, p.Y)
		}
		ly := float64(svgTop + 10 + 20*i)
		lx := float64(svgW - svgRight + 12)
		fmt.Fprintf(&d.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`+"\n", lx, ly, lx+24, ly, color, dash)
		d.text(lx+30, ly+4, "start", 11, s.Name)
	}
	return d.close()
}

// perPacketFloor is where values at or below zero are drawn on a log axis.
const perPacketFloor = 1.0 // ns

// PerPacketSVG plots the cost per packet against the number of SAs (rules,
// set elements), log-scale on both axes: mlsgate's full verdict under
// BPF_PROG_TEST_RUN and the empty program it is measured against, and, from
// real traffic, what mlsgate, nftables rules and an nftables set add per
// packet over no filter.
func PerPacketSVG(r *Report) string {
	var series []svgSeries
	add := func(name string, dashed bool, x int, ns float64) {
		i := slices.IndexFunc(series, func(s svgSeries) bool { return s.Name == name })
		if i < 0 {
			series = append(series, svgSeries{Name: name, Dashed: dashed})
			i = len(series) - 1
		}
		p := svgPoint{X: float64(max(x, 1)), Y: ns}
		if ns <= perPacketFloor {
			p.Y, p.Floor = perPacketFloor, true
		}
		series[i].Points = append(series[i].Points, p)
	}
	if r.Fastpath != nil {
		for _, c := range r.Fastpath.Cases {
			if c.Family == FamilyIPv6 {
				continue // the plot compares with nftables, measured on IPv4
			}
			switch c.Name {
			case "esp":
				add("mlsgate verdict (test run)", false, c.SAs, c.NsPerPacket)
			case "empty":
				add("empty program (test run)", true, c.SAs, c.NsPerPacket)
			}
		}
	}
	if r.Traffic != nil {
		for _, c := range r.Traffic.Cases {
			switch c.Name {
			case TrafficMlsgate:
				add("mlsgate, traffic (added)", false, c.Size, c.AddedNs)
			case TrafficNftRules:
				add("nftables rules (added)", false, c.Size, c.AddedNs)
			case TrafficNftSet:
				add("nftables set (added)", false, c.Size, c.AddedNs)
			}
		}
	}
	for i := range series {
		slices.SortFunc(series[i].Points, func(a, b svgPoint) int { return int(math.Copysign(1, a.X-b.X)) })
	}
	note := fmt.Sprintf("%s. Hollow points: at or below %g ns (noise), drawn on it.", r.Host, perPacketFloor)
	return logLogPlot("Cost per packet against the number of SAs / rules", "SAs (mlsgate) / rules or set elements (nftables)", "ns per packet", note, series)
}

// VMStartSVG stacks each backend's median load, step by step, per
// scenario, beside the paper's configure and load phases.
func VMStartSVG(r *VMStartResult) string {
	type bar struct {
		label string
		parts []struct {
			name string
			d    time.Duration
		}
	}
	var bars []bar
	var names []string
	addPart := func(b *bar, name string, d time.Duration) {
		b.parts = append(b.parts, struct {
			name string
			d    time.Duration
		}{name, d})
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	paperS := bar{label: "paper scratch"}
	addPart(&paperS, "paper: configure/load policy", sec(PaperScratchConfigure))
	addPart(&paperS, "paper: loading browser and page", sec(PaperScratchLoad))
	paperP := bar{label: "paper pre-loaded"}
	addPart(&paperP, "paper: configure/load policy", sec(PaperPreloadedConfigure))
	addPart(&paperP, "paper: loading browser and page", sec(PaperPreloadedLoad))
	bars = append(bars, paperS, paperP)
	for _, be := range r.Backends {
		for _, sc := range []string{Scratch, Preloaded, ReadyPool} {
			m, ok := be.Median(sc)
			if !ok || m.Runs == 0 {
				continue
			}
			label := be.Backend + " " + sc
			if sc == ReadyPool {
				label = be.Backend + " ready pool"
			}
			b := bar{label: label}
			for _, s := range m.Steps {
				if s.Name != "ready" && s.Duration > 0 {
					addPart(&b, s.Name, s.Duration)
				}
			}
			bars = append(bars, b)
		}
	}
	var most time.Duration
	for _, b := range bars {
		var t time.Duration
		for _, p := range b.parts {
			t += p.d
		}
		most = max(most, t)
	}
	top := math.Max(1, math.Ceil(most.Seconds()))
	var d svgDoc
	d.open("VM start, median per phase (the paper's Table 1)")
	plotH := float64(svgH - svgTop - svgBott)
	yOf := func(s float64) float64 { return svgH - svgBott - s/top*plotH }
	step := math.Max(1, math.Ceil(top/8))
	for s := 0.0; s <= top; s += step {
		d.line(svgLeft, yOf(s), svgW-svgRight, yOf(s), "#dddddd", 1)
		d.text(svgLeft-6, yOf(s)+4, "end", 11, fmt.Sprintf("%g s", s))
	}
	d.line(svgLeft, svgH-svgBott, svgW-svgRight, svgH-svgBott, "black", 1)
	slot := float64(svgW-svgLeft-svgRight) / float64(len(bars))
	for i, b := range bars {
		x := svgLeft + slot*float64(i) + slot*0.15
		w := slot * 0.7
		var acc float64
		for _, p := range b.parts {
			h := p.d.Seconds() / top * plotH
			color := svgColors[slices.Index(names, p.name)%len(svgColors)]
			fmt.Fprintf(&d.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s: %s %.3f s</title></rect>`+"\n",
				x, yOf(acc)-h, w, h, color, html.EscapeString(b.label), html.EscapeString(p.name), p.d.Seconds())
			acc += p.d.Seconds()
		}
		d.text(x+w/2, svgH-svgBott+14, "middle", 10, b.label)
		total := fmt.Sprintf("%.2f s", acc)
		if acc < 1 {
			total = fmt.Sprintf("%.0f ms", acc*1000) // a ready-pool hit: its bar is a sliver
		}
		d.text(x+w/2, yOf(acc)-4, "middle", 10, total)
	}
	for i, n := range names {
		ly := float64(svgTop + 10 + 18*i)
		lx := float64(svgW - svgRight + 12)
		fmt.Fprintf(&d.b, `<rect x="%.1f" y="%.1f" width="14" height="12" fill="%s"/>`+"\n", lx, ly-10, svgColors[i%len(svgColors)])
		d.text(lx+20, ly, "start", 11, n)
	}
	var hw []string
	for _, be := range r.Backends {
		hw = append(hw, be.Backend+": "+be.Hardware)
	}
	d.text(svgLeft, svgH-8, "start", 10, strings.Join(hw, "; "))
	return d.close()
}

// AgentSVG is the "one change" plot: one SA change, p50 and p99, against
// the number of SAs the agent holds, log-scale on both axes.
func AgentSVG(r *Report) string {
	byVifs := map[int][]*AgentScaleResult{}
	for _, a := range r.Agent {
		byVifs[a.Vifs] = append(byVifs[a.Vifs], a)
	}
	var series []svgSeries
	for _, v := range slices.Sorted(maps.Keys(byVifs)) {
		as := byVifs[v]
		slices.SortFunc(as, func(a, b *AgentScaleResult) int { return a.SAs - b.SAs })
		p50 := svgSeries{Name: fmt.Sprintf("p50, %d vifs", v)}
		p99 := svgSeries{Name: fmt.Sprintf("p99, %d vifs", v), Dashed: true}
		for _, a := range as {
			if a.Changes == 0 {
				continue
			}
			p50.Points = append(p50.Points, svgPoint{X: float64(a.SAs), Y: float64(max(a.ChangeP50, time.Microsecond))})
			p99.Points = append(p99.Points, svgPoint{X: float64(a.SAs), Y: float64(max(a.ChangeP99, time.Microsecond))})
		}
		series = append(series, p50, p99)
	}
	note := fmt.Sprintf("%s. An SA added, rotated or deleted (XFRM events) → its entries in the pinned map.", r.Host)
	return logLogPlot("One SA change against the number of SAs", "SAs the agent holds", "time to the maps", note, series)
}
