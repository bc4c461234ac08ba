package deploy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// metricNames returns the metric names a PromQL expression selects, sorted
// and without duplicates. It is no parser: it tokenizes just enough to tell
// metric names from everything else that looks like an identifier, which
// is
//   - a function or aggregation: an identifier followed by "(" (metric
//     names never are), or an aggregation followed by by/without;
//   - a keyword: and, or, unless, atan2, bool, offset, inf, nan, and the
//     modifiers by, without, on, ignoring, group_left, group_right, whose
//     parenthesised label lists are skipped whole;
//   - label matchers between braces (only {__name__="x"} names a metric);
//   - string literals (label names in label_replace, count_values...);
//   - ranges and subqueries between brackets, numbers and durations;
//   - Grafana's variables ($cluster, ${cluster}, $__rate_interval) and
//     comments.
func metricNames(expr string) ([]string, error) {
	var names []string
	s := &scanner{src: expr}
	for {
		s.skipSpace()
		if s.eof() {
			break
		}
		c := s.peek()
		switch {
		case c == '#':
			s.skipComment()
		case c == '"' || c == '\'' || c == '`':
			if _, err := s.str(); err != nil {
				return nil, err
			}
		case c == '{':
			name, err := s.matchers()
			if err != nil {
				return nil, err
			}
			if name != "" {
				names = append(names, name)
			}
		case c == '[':
			if err := s.skipBrackets(); err != nil {
				return nil, err
			}
		case c == '$':
			s.skipVariable()
		case isDigit(c) || (c == '.' && isDigit(s.peekAt(1))):
			s.skipNumber()
		case isIdentStart(c):
			word := s.ident()
			lower := strings.ToLower(word)
			s.skipSpace()
			next := s.peek()
			switch {
			case modifiers[lower]:
				// A label list follows in parentheses (optional after
				// group_left/group_right).
				if next == '(' {
					if err := s.skipParens(); err != nil {
						return nil, err
					}
				}
			case keywords[lower]:
			case next == '(':
				// A function or an aggregation's argument list.
			case aggregations[lower] && s.followedByModifier():
				// sum by (x) (...)
			default:
				names = append(names, word)
			}
		default:
			s.pos++ // operators, parentheses, commas, @, and the sign of -5m
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

var (
	modifiers = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true}
	keywords = map[string]bool{"and": true, "or": true, "unless": true, "atan2": true, "bool": true,
		"offset": true, "inf": true, "nan": true}
	aggregations = map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "group": true,
		"stddev": true, "stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true,
		"quantile": true, "limitk": true, "limit_ratio": true}
)

type scanner struct {
	src string
	pos int
}

func (s *scanner) eof() bool  { return s.pos >= len(s.src) }
func (s *scanner) peek() byte { return s.peekAt(0) }
func (s *scanner) peekAt(n int) byte {
	if s.pos+n >= len(s.src) {
		return 0
	}
	return s.src[s.pos+n]
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
func isIdent(c byte) bool { return isIdentStart(c) || isDigit(c) }

func (s *scanner) skipSpace() {
	for !s.eof() && strings.IndexByte(" \t\r\n", s.peek()) >= 0 {
		s.pos++
	}
}

func (s *scanner) skipComment() {
	for !s.eof() && s.peek() != '\n' {
		s.pos++
	}
}

func (s *scanner) ident() string {
	start := s.pos
	for !s.eof() && isIdent(s.peek()) {
		s.pos++
	}
	return s.src[start:s.pos]
}

// str reads a string literal and returns its raw content.
func (s *scanner) str() (string, error) {
	quote := s.peek()
	start := s.pos
	s.pos++
	var b strings.Builder
	for !s.eof() {
		c := s.peek()
		s.pos++
		switch {
		case c == quote:
			return b.String(), nil
		case c == '\\' && quote != '`':
			if s.eof() {
				return "", fmt.Errorf("unterminated string at %d in %q", start, s.src)
			}
			b.WriteByte(s.peek())
			s.pos++
		default:
			b.WriteByte(c)
		}
	}
	return "", fmt.Errorf("unterminated string at %d in %q", start, s.src)
}

// matchers reads a {label op "value", ...} block and returns the metric
// name it selects by {__name__="..."}, if any.
func (s *scanner) matchers() (string, error) {
	start := s.pos
	s.pos++ // {
	name := ""
	for {
		s.skipSpace()
		if s.eof() {
			return "", fmt.Errorf("unterminated { at %d in %q", start, s.src)
		}
		switch c := s.peek(); {
		case c == '}':
			s.pos++
			return name, nil
		case c == ',':
			s.pos++
		case isIdentStart(c) || c == '"':
			var label string
			if c == '"' { // a quoted (UTF-8) label name
				l, err := s.str()
				if err != nil {
					return "", err
				}
				label = l
			} else {
				label = s.ident()
			}
			s.skipSpace()
			op := ""
			for !s.eof() && strings.IndexByte("=!~", s.peek()) >= 0 {
				op += string(s.peek())
				s.pos++
			}
			s.skipSpace()
			if op == "" {
				// {"metric.name"}: a bare quoted name is the metric.
				if c == '"' {
					name = label
				}
				continue
			}
			if q := s.peek(); q != '"' && q != '\'' && q != '`' {
				return "", fmt.Errorf("label %s: expected a string after %s at %d in %q", label, op, s.pos, s.src)
			}
			v, err := s.str()
			if err != nil {
				return "", err
			}
			if label == "__name__" && op == "=" {
				name = v
			}
		default:
			return "", fmt.Errorf("unexpected %q in label matchers at %d in %q", c, s.pos, s.src)
		}
	}
}

// skipBrackets skips a range or subquery ([5m], [$__rate_interval],
// [1h:5m]).
func (s *scanner) skipBrackets() error {
	start := s.pos
	depth := 0
	for !s.eof() {
		switch s.peek() {
		case '[':
			depth++
		case ']':
			depth--
			if depth == 0 {
				s.pos++
				return nil
			}
		}
		s.pos++
	}
	return fmt.Errorf("unterminated [ at %d in %q", start, s.src)
}

// skipParens skips a parenthesised label list (by, on, ...).
func (s *scanner) skipParens() error {
	start := s.pos
	for !s.eof() {
		c := s.peek()
		s.pos++
		if c == ')' {
			return nil
		}
	}
	return fmt.Errorf("unterminated ( at %d in %q", start, s.src)
}

// skipVariable skips $name, ${name...} and $__interval-style variables.
func (s *scanner) skipVariable() {
	s.pos++ // $
	if s.peek() == '{' {
		for !s.eof() && s.peek() != '}' {
			s.pos++
		}
		s.pos++
		return
	}
	for !s.eof() && isIdent(s.peek()) {
		s.pos++
	}
}

// skipNumber skips 16, 0.99, 1e-3, 0x1F and durations like 5m or 1h30m.
func (s *scanner) skipNumber() {
	for !s.eof() {
		c := s.peek()
		switch {
		case isIdent(c) || c == '.':
			s.pos++
			if (c == 'e' || c == 'E') && (s.peek() == '+' || s.peek() == '-') && isDigit(s.peekAt(1)) {
				s.pos++
			}
		default:
			return
		}
	}
}

// followedByModifier reports whether by or without comes next (after an
// aggregation name: sum by (x) (...)).
func (s *scanner) followedByModifier() bool {
	rest := strings.ToLower(s.src[s.pos:])
	for _, m := range []string{"by", "without"} {
		if strings.HasPrefix(rest, m) && !isIdent(s.peekAt(len(m))) {
			return true
		}
	}
	return false
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		name, expr string
		want       []string
	}{
		{"aggregation with by and matchers", `sum by (cluster) (pharos_agent_role{job="pharos-agent", role="primary"}) < 1`,
			[]string{"pharos_agent_role"}},
		{"vector matching keywords and label lists", `(a_lag < 0) and on (cluster, member) (b_role{role="replica"} == 1)`,
			[]string{"a_lag", "b_role"}},
		{"unless", `(x == 1) unless on (cluster, member) (y == 1)`, []string{"x", "y"}},
		{"histogram with grafana variables", `histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket{c=~"$cluster"}[$__rate_interval])))`,
			[]string{"x_seconds_bucket"}},
		{"range function and arithmetic", `max_over_time(m[1m]) > 16 * 1024 * 1024`, []string{"m"}},
		{"label names in strings", `label_replace(up, "foo", "$1", "instance", "(.*):.*")`, []string{"up"}},
		{"offset and subquery", `rate(y_total[5m] offset 1h) + max_over_time(z[1h:5m] offset -5m)`, []string{"y_total", "z"}},
		{"without, ignoring, group_left", `sum without (instance) (z) / ignoring (code) group_left (a) w`, []string{"w", "z"}},
		{"group_left without labels", `z / on (job) group_left w`, []string{"w", "z"}},
		{"__name__ matcher", `{__name__="quoted_metric", job="x"}`, []string{"quoted_metric"}},
		{"regex __name__ is no name", `count({__name__=~"pharos_.*"})`, nil},
		{"count_values label", `count_values("version", build_info)`, []string{"build_info"}},
		{"braces and escapes in strings", `topk(3, sum(rate(http_requests_total{code="500, {\"}"}[5m])))`, []string{"http_requests_total"}},
		{"@ modifier", `foo @ start() + bar @ 1609746000`, []string{"bar", "foo"}},
		{"exponent and comment", "1e-3 * bar # sum_this is a comment\n+ 0x1F", []string{"bar"}},
		{"upper-case keywords", `SUM BY (x) (baz) OR qux`, []string{"baz", "qux"}},
		{"functions of nothing", `vector(1) unless absent(qq) + time()`, []string{"qq"}},
		{"aggregation after the argument list", `sum(x) by (job)`, []string{"x"}},
		{"grafana braces variable", `rate(a_total{c=~"${cluster:regex}"}[${__rate_interval}]) * ${factor}`, []string{"a_total"}},
		{"colons in recording rule names", `job:requests:rate5m > 1`, []string{"job:requests:rate5m"}},
		{"or of several roles", `sum by (member) (r{role="primary"} * 5 or r{role="replica"} * 4)`, []string{"r"}},
		{"bool modifier", `up == bool 0`, []string{"up"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := metricNames(tc.expr)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("metricNames(%s) = %q, want %q", tc.expr, got, tc.want)
			}
		})
	}
	for _, bad := range []string{`x{a="b}`, `x{a="b"`, `rate(x[5m)`, `x{a=b}`} {
		if got, err := metricNames(bad); err == nil {
			t.Errorf("metricNames(%s) = %q, want an error", bad, got)
		}
	}
}
