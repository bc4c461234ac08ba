package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pharos-ha/pharos/internal/pgproc"
)

// usageError is a bad flag or config value: the command exits 2 with its
// one-line message, which names the key.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// duration is a time.Duration written as "1.5s" in YAML.
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 500ms or 2s", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

// byteSize is a size in bytes written as 1024, "64kB", "16MB" or "1GB".
type byteSize int64

func parseByteSize(s string) (byteSize, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kB", 1 << 10}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size like 1048576, 64kB or 16MB", s)
	}
	return byteSize(n * mult), nil
}

func (b *byteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// loadYAML decodes a config file strictly, key by key, so that every
// problem (an unknown key, a value of the wrong type, a file cut short) is
// one line that names the key and its line; nothing is silently ignored.
// into must point to a struct whose fields carry yaml tags.
func loadYAML(path string, into any) error { return decodeYAML(path, into, false) }

// decodeYAML is loadYAML; with skipUnknown, keys into has no field for are
// skipped instead of refused (a bad value of a known key still is one).
func decodeYAML(path string, into any, skipUnknown bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return usageErrorf("config: %v", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return usageErrorf("config %s: %s", path, oneLine(err))
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return usageErrorf("config %s: line %d: expected key: value settings", path, root.Line)
	}
	fields := yamlFields(into)
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, value := root.Content[i], root.Content[i+1]
		field, ok := fields[key.Value]
		if !ok && skipUnknown {
			continue
		}
		if !ok {
			return usageErrorf("config %s: line %d: unknown key %q", path, key.Line, key.Value)
		}
		if err := value.Decode(field.Addr().Interface()); err != nil {
			return usageErrorf("config %s: %s (line %d): %s", path, key.Value, key.Line, oneLine(err))
		}
	}
	return nil
}

// yamlFields maps the yaml tags of the struct into points to to its fields;
// the fields of an embedded struct tagged `yaml:",inline"` are the outer
// struct's own keys, so config files stay flat.
func yamlFields(into any) map[string]reflect.Value {
	fields := make(map[string]reflect.Value)
	addYAMLFields(reflect.ValueOf(into).Elem(), fields)
	return fields
}

func addYAMLFields(v reflect.Value, fields map[string]reflect.Value) {
	for i := range v.NumField() {
		switch tag, opts, _ := strings.Cut(v.Type().Field(i).Tag.Get("yaml"), ","); {
		case opts == "inline":
			addYAMLFields(v.Field(i), fields)
		case tag != "" && tag != "-":
			fields[tag] = v.Field(i)
		}
	}
}

// oneLine reduces a yaml error to its last line, without the "yaml: "
// prefix.
func oneLine(err error) string {
	msg := strings.TrimSpace(err.Error())
	if i := strings.LastIndex(msg, "\n"); i >= 0 {
		msg = strings.TrimSpace(msg[i+1:])
	}
	return strings.TrimPrefix(msg, "yaml: ")
}

// overrides collects flag values to apply on top of the config file, so
// that flags win whatever order things are parsed in.
type overrides[S any] struct {
	fs      *flag.FlagSet
	pending []func(*S)
}

// bind registers a flag whose parsed value is written through field.
func bind[S, T any](o *overrides[S], name, usage string, parse func(string) (T, error), field func(*S) *T) {
	o.fs.Func(name, usage, func(v string) error {
		t, err := parse(v)
		if err != nil {
			return err
		}
		o.pending = append(o.pending, func(s *S) { *field(s) = t })
		return nil
	})
}

// parse parses args with fs, then loads *configPath (when given) over
// defaults and applies the flags on top: flags win. Errors are one line;
// the full flag list is printed only for -h.
func (o *overrides[S]) parse(args []string, configPath *string, defaults S, stderr io.Writer) (S, error) {
	var zero S
	fs := o.fs
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintf(stderr, "usage: %s [--config FILE] [flags]\n", fs.Name())
			fs.PrintDefaults()
			return zero, err
		}
		return zero, usageErrorf("%v", err)
	}
	if fs.NArg() > 0 {
		return zero, usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	s := defaults
	if *configPath != "" {
		if err := loadYAML(*configPath, &s); err != nil {
			return zero, err
		}
	}
	o.apply(&s)
	return s, nil
}

func (o *overrides[S]) apply(s *S) {
	for _, f := range o.pending {
		f(s)
	}
}

func parseString(v string) (string, error) { return v, nil }
func parseDuration(v string) (duration, error) {
	d, err := time.ParseDuration(v)
	return duration(d), err
}
func parseInt(v string) (int, error)   { return strconv.Atoi(v) }
func parseBool(v string) (bool, error) { return strconv.ParseBool(v) }
func parseList(v string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out, nil
}

// newLogger returns a text logger on w at the named level.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErrorf("log_level: %q is not one of debug, info, warn, error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// scrubSecretEnv removes the variables secrets are read from
// (pgproc.IsSecretEnv) from this process's environment, once they are
// read, so that no program it starts inherits them.
func scrubSecretEnv() {
	for _, kv := range os.Environ() {
		if pgproc.IsSecretEnv(kv) {
			name, _, _ := strings.Cut(kv, "=")
			_ = os.Unsetenv(name)
		}
	}
}

// readSecret returns the value of a secret given inline, in a file (first
// line), or in an environment variable, in that order of preference.
func readSecret(key, inline, file, env string) (string, error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return "", usageErrorf("%s_file: %v", key, err)
		}
		line, _, _ := strings.Cut(string(data), "\n")
		return strings.TrimRight(line, "\r"), nil
	}
	if inline != "" {
		return inline, nil
	}
	return os.Getenv(env), nil
}
