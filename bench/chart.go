package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// The charts are plain SVG written by hand: two chart shapes do not
// justify a plotting dependency, and the files must render on GitHub and
// in a browser with no script.

// palette holds the series colours, in series order. They stay
// distinguishable for the common forms of colour blindness (Okabe–Ito).
var palette = []string{"#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"}

// BarSeries is one series of a grouped bar chart: one value per group.
type BarSeries struct {
	Name   string
	Values []float64 // NaN: no bar
}

// BarChart is a grouped bar chart: for each group (x), one bar per series.
type BarChart struct {
	Title  string
	YLabel string
	Groups []string
	Series []BarSeries
}

const (
	chartWidth  = 760
	chartHeight = 380
	marginLeft  = 80
	marginRight = 170 // the legend
	marginTop   = 40
	marginBot   = 50
)

// WriteSVG renders the chart.
func (c *BarChart) WriteSVG(w io.Writer) error {
	var b strings.Builder
	top := 0.0
	for _, s := range c.Series {
		for _, v := range s.Values {
			if !math.IsNaN(v) {
				top = math.Max(top, v)
			}
		}
	}
	ticks := niceTicks(0, top, 5)
	yMax := ticks[len(ticks)-1]
	plotW := float64(chartWidth - marginLeft - marginRight)
	plotH := float64(chartHeight - marginTop - marginBot)
	y := func(v float64) float64 { return marginTop + plotH - v/yMax*plotH }

	svgHeader(&b, c.Title)
	yAxis(&b, ticks, y, c.YLabel)
	groupW := plotW / float64(max(len(c.Groups), 1))
	barW := groupW * 0.8 / float64(max(len(c.Series), 1))
	for gi, g := range c.Groups {
		x0 := marginLeft + float64(gi)*groupW + groupW*0.1
		for si, s := range c.Series {
			if gi >= len(s.Values) || math.IsNaN(s.Values[gi]) {
				continue
			}
			v := s.Values[gi]
			x := x0 + float64(si)*barW
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s, %s: %s</title></rect>`+"\n",
				x, y(v), barW*0.92, y(0)-y(v), palette[si%len(palette)], esc(s.Name), esc(g), formatValue(v))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n",
			marginLeft+float64(gi)*groupW+groupW/2, chartHeight-marginBot+20, esc(g))
	}
	legend(&b, c.Series)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// TimelineChart draws writes per bucket around a fault: acknowledged
// writes up, failed or unanswered ones down, the fault at x = 0.
type TimelineChart struct {
	Title    string
	BucketMs float64
	Points   []jsonTimePoint
	// Marks are vertical dashed lines with a label, at offsets in ms
	// (e.g. the first write on the new primary).
	Marks []TimelineMark
}

// TimelineMark is a labelled vertical line of a TimelineChart.
type TimelineMark struct {
	AtMs  float64
	Label string
}

// WriteSVG renders the chart.
func (c *TimelineChart) WriteSVG(w io.Writer) error {
	var b strings.Builder
	if len(c.Points) == 0 || c.BucketMs <= 0 {
		svgHeader(&b, c.Title)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">no writes recorded</text></svg>`+"\n", chartWidth/2, chartHeight/2)
		_, err := io.WriteString(w, b.String())
		return err
	}
	up, down := 0.0, 0.0
	for _, p := range c.Points {
		up = math.Max(up, float64(p.Acked))
		down = math.Max(down, float64(p.Failed+p.Unknown))
	}
	ticks := niceTicks(0, math.Max(up, 1), 4)
	yMax := ticks[len(ticks)-1]
	// The failures get the same scale below the axis, but only as much
	// room as they need (at least a fifth of the plot, so they show).
	yMin := -math.Max(down, yMax/5)
	plotW := float64(chartWidth - marginLeft - marginRight)
	plotH := float64(chartHeight - marginTop - marginBot)
	y := func(v float64) float64 { return marginTop + (yMax-v)/(yMax-yMin)*plotH }
	t0 := c.Points[0].TMs
	t1 := c.Points[len(c.Points)-1].TMs + c.BucketMs
	x := func(ms float64) float64 { return marginLeft + (ms-t0)/(t1-t0)*plotW }

	svgHeader(&b, c.Title)
	yAxis(&b, ticks, y, "writes per "+formatValue(c.BucketMs)+" ms")
	// Failures are counted downwards: label that side with positive counts.
	for _, t := range niceTicks(0, -yMin, 3)[1:] {
		if -t < yMin {
			break
		}
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="%s">%s</text>`+"\n", marginLeft-6, y(-t)+4, palette[5], formatValue(t))
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", marginLeft, y(0), x(t1), y(0))
	bw := x(c.BucketMs) - x(0)
	for _, p := range c.Points {
		if p.Acked > 0 {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s ms: %d acknowledged</title></rect>`+"\n",
				x(p.TMs), y(float64(p.Acked)), bw*0.9, y(0)-y(float64(p.Acked)), palette[2], formatValue(p.TMs), p.Acked)
		}
		if bad := p.Failed + p.Unknown; bad > 0 {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s ms: %d failed, %d unanswered</title></rect>`+"\n",
				x(p.TMs), y(0), bw*0.9, y(float64(-bad))-y(0), palette[5], formatValue(p.TMs), p.Failed, p.Unknown)
		}
	}
	// Time axis: a tick every second.
	for s := math.Ceil(t0 / 1000); s*1000 <= t1; s++ {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999"/>`+"\n", x(s*1000), y(yMin), x(s*1000), y(yMin)+5)
		label := fmt.Sprintf("%+gs", s)
		if s == 0 {
			label = "0s" // not "+0s", nor "-0s" for a negative zero
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x(s*1000), y(yMin)+20, label)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">time from the fault</text>`+"\n", marginLeft+plotW/2, chartHeight-8)
	marks := append([]TimelineMark{{AtMs: 0, Label: "fault"}}, c.Marks...)
	for i, m := range marks {
		if m.AtMs < t0 || m.AtMs > t1 {
			continue
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#333" stroke-dasharray="4 3"/>`+"\n", x(m.AtMs), marginTop, x(m.AtMs), y(yMin))
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", x(m.AtMs)+3, marginTop+12+14*i, esc(m.Label))
	}
	legend(&b, []BarSeries{{Name: "acknowledged"}, {Name: "failed or no answer"}}, palette[2], palette[5])
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func svgHeader(b *strings.Builder, title string) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		chartWidth, chartHeight, chartWidth, chartHeight)
	fmt.Fprintf(b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(b, `<text x="%d" y="22" text-anchor="middle" font-size="15" font-weight="bold">%s</text>`+"\n", chartWidth/2, esc(title))
}

// yAxis draws the gridlines, tick labels and the axis label.
func yAxis(b *strings.Builder, ticks []float64, y func(float64) float64, label string) {
	for _, t := range ticks {
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", marginLeft, y(t), chartWidth-marginRight, y(t))
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", marginLeft-6, y(t)+4, formatValue(t))
	}
	fmt.Fprintf(b, `<text transform="translate(16 %d) rotate(-90)" text-anchor="middle">%s</text>`+"\n",
		marginTop+(chartHeight-marginTop-marginBot)/2, esc(label))
}

// legend lists the series on the right; colours default to the palette.
func legend(b *strings.Builder, series []BarSeries, colours ...string) {
	for i, s := range series {
		c := palette[i%len(palette)]
		if i < len(colours) {
			c = colours[i]
		}
		yy := marginTop + 10 + 20*i
		fmt.Fprintf(b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/>`+"\n", chartWidth-marginRight+14, yy, c)
		fmt.Fprintf(b, `<text x="%d" y="%d">%s</text>`+"\n", chartWidth-marginRight+32, yy+10, esc(s.Name))
	}
}

// niceTicks returns about n+1 round tick values from lo up to at least hi
// (steps of 1, 2 or 5 times a power of ten).
func niceTicks(lo, hi float64, n int) []float64 {
	if !(hi > lo) {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(n)
	exp := math.Floor(math.Log10(raw))
	pow := math.Pow(10, exp)
	mult := 10.0
	for _, m := range []float64{1, 2, 5} {
		if m*pow >= raw {
			mult = m
			break
		}
	}
	// Tick i is lo + i·mult·10^exp, computed so that 0.1-sized steps come
	// out as 0.6 and not 0.6000000000000001.
	at := func(i int) float64 {
		if exp < 0 {
			return lo + float64(i)*mult/math.Pow(10, -exp)
		}
		return lo + float64(i)*mult*pow
	}
	var out []float64
	for i := 0; ; i++ {
		v := at(i)
		out = append(out, v)
		if v >= hi {
			break
		}
	}
	return out
}

// formatValue prints a number without false precision: thousands as
// 12.3k, small values with up to two decimals.
func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return trimZeros(fmt.Sprintf("%.2f", v/1e6)) + "M"
	case a >= 1e4:
		return trimZeros(fmt.Sprintf("%.1f", v/1e3)) + "k"
	case a >= 100 || v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	}
	return trimZeros(fmt.Sprintf("%.2f", v))
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

func esc(s string) string { return html.EscapeString(s) }
