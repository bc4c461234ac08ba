package restapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/pharos-ha/pharos/internal/cluster"
)

// mutation carries out one operator call whose body has been read; it
// returns the status code and the response text.
type mutation func(ctx context.Context, body []byte) (int, string)

func (s *Server) mutate(w http.ResponseWriter, r *http.Request, do mutation) {
	if !allow(w, r, http.MethodPost) {
		return
	}
	if err := s.crossOrigin.Check(r); err != nil {
		s.log.Warn("REST API call refused", "path", r.URL.Path, "remote", r.RemoteAddr, "reason", "cross-origin",
			"sec_fetch_site", r.Header.Get("Sec-Fetch-Site"), "origin", r.Header.Get("Origin"))
		writeText(w, r, http.StatusForbidden, fmt.Sprintf("cross-origin request refused (Sec-Fetch-Site %q, Origin %q): operator calls are not for web pages",
			r.Header.Get("Sec-Fetch-Site"), r.Header.Get("Origin")))
		return
	}
	who, ok := s.authorize(w, r)
	if !ok {
		return
	}
	if ct := r.Header.Get("Content-Type"); !isJSON(ct) {
		s.log.Warn("REST API call refused", "path", r.URL.Path, "by", who, "remote", r.RemoteAddr, "reason", "content type", "content_type", ct)
		w.Header().Set("Accept-Post", "application/json")
		writeText(w, r, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Type %q: operator calls take application/json (send it even with an empty body)", ct))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeText(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", tooBig.Limit))
			return
		}
		writeText(w, r, http.StatusBadRequest, "read request body: "+err.Error())
		return
	}
	t0 := time.Now()
	code, msg := do(r.Context(), body)
	level := slog.LevelInfo
	if code >= 500 {
		level = slog.LevelWarn
	}
	s.log.Log(r.Context(), level, "REST API call", "path", r.URL.Path, "by", who, "remote", r.RemoteAddr,
		"status", code, "result", msg, "took", time.Since(t0).Round(time.Millisecond))
	writeText(w, r, code, msg)
}

// isJSON reports whether a Content-Type header declares JSON, whatever its
// parameters (charset) and case.
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
}

// authorize checks the caller's credentials and answers 403 or 401 when
// they do not pass. It returns who the caller is for the log: the basic
// auth user or "token" (never a secret).
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) (string, bool) {
	if s.cfg.Username == "" && s.cfg.Token == "" {
		writeText(w, r, http.StatusForbidden,
			"mutating calls are disabled: the REST API has no username/password or token configured")
		return "", false
	}
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	switch {
	case strings.EqualFold(scheme, "Basic") && s.cfg.Username != "":
		user, pass, ok := r.BasicAuth()
		u := sha256.Sum256([]byte(user))
		p := sha256.Sum256([]byte(pass))
		// Both compared whatever the first gives, and & not &&.
		if ok && subtle.ConstantTimeCompare(u[:], s.userSum[:])&subtle.ConstantTimeCompare(p[:], s.passSum[:]) == 1 {
			return user, true
		}
	case strings.EqualFold(scheme, "Bearer") && s.cfg.Token != "":
		t := sha256.Sum256([]byte(strings.TrimSpace(cred)))
		if subtle.ConstantTimeCompare(t[:], s.tokenSum[:]) == 1 {
			return "token", true
		}
	}
	if s.cfg.Username != "" {
		w.Header().Add("WWW-Authenticate", `Basic realm="`+realm+`", charset="UTF-8"`)
	}
	if s.cfg.Token != "" {
		w.Header().Add("WWW-Authenticate", `Bearer realm="`+realm+`"`)
	}
	msg := "authentication required"
	if scheme != "" {
		msg = "wrong credentials"
	}
	s.log.Warn("REST API call refused", "path", r.URL.Path, "remote", r.RemoteAddr, "reason", msg, "scheme", scheme)
	writeText(w, r, http.StatusUnauthorized, msg)
	return "", false
}

// switchoverBody is the JSON of POST /switchover and /failover, Patroni's
// fields ("member" is Patroni's older name for candidate).
type switchoverBody struct {
	Leader      *string `json:"leader"`
	Candidate   *string `json:"candidate"`
	Member      *string `json:"member"`
	ScheduledAt *string `json:"scheduled_at"`
}

func (s *Server) switchover(ctx context.Context, body []byte) (int, string) {
	req, code, msg := parseSwitchover(body, "switchover", time.Now())
	if code != 0 {
		return code, msg
	}
	return s.doSwitchover(ctx, req)
}

func (s *Server) doSwitchover(ctx context.Context, req SwitchoverRequest) (int, string) {
	if err := s.backend.Switchover(ctx, req); err != nil {
		return errStatus(err, http.StatusPreconditionFailed), err.Error()
	}
	switch {
	case req.ScheduledAt != nil:
		return http.StatusAccepted, "Switchover scheduled"
	case req.Candidate != "":
		return http.StatusOK, fmt.Sprintf("Successfully switched over to %q", req.Candidate)
	default:
		return http.StatusOK, "Successfully switched over"
	}
}

func (s *Server) failover(ctx context.Context, body []byte) (int, string) {
	req, code, msg := parseSwitchover(body, "failover", time.Now())
	if code != 0 {
		return code, msg
	}
	if req.Leader != "" {
		// Patroni: a failover naming the leader is a switchover.
		return s.doSwitchover(ctx, req)
	}
	if err := s.backend.Failover(ctx, req); err != nil {
		return errStatus(err, http.StatusPreconditionFailed), err.Error()
	}
	return http.StatusOK, fmt.Sprintf("Successfully failed over to %q", req.Candidate)
}

// parseSwitchover checks a switchover or failover body the way Patroni
// does; code is 0 when the request may go to the backend.
func parseSwitchover(body []byte, action string, now time.Time) (req SwitchoverRequest, code int, msg string) {
	var b switchoverBody
	if err := decodeObject(body, &b); err != nil {
		return req, http.StatusBadRequest, err.Error()
	}
	if b.Leader != nil {
		req.Leader = *b.Leader
	}
	if b.Candidate != nil {
		req.Candidate = *b.Candidate
	} else if b.Member != nil {
		req.Candidate = *b.Member
	}
	for _, name := range []string{req.Leader, req.Candidate} {
		if name != "" && !cluster.ValidName(name) {
			return req, http.StatusBadRequest, fmt.Sprintf("%q is not a member name", name)
		}
	}
	switch {
	case action == "failover" && req.Candidate == "":
		return req, http.StatusBadRequest, "Failover could be performed only to a specific candidate"
	case action == "switchover" && req.Leader == "":
		return req, http.StatusBadRequest, "Switchover could be performed only from a specific leader"
	case req.Leader != "" && req.Leader == req.Candidate:
		return req, http.StatusBadRequest, "Switchover target and source are the same"
	}
	if b.ScheduledAt != nil && *b.ScheduledAt != "" {
		if action == "failover" {
			return req, http.StatusBadRequest, "Failover can't be scheduled"
		}
		at, code, msg := parseSchedule(*b.ScheduledAt, now)
		if code != 0 {
			return req, code, msg
		}
		req.ScheduledAt = &at
	}
	return req, 0, ""
}

// scheduleLayouts are the forms of scheduled_at accepted: ISO 8601 with a
// time zone, seconds optional (Patroni's example is "2019-09-24T12:00+00").
var scheduleLayouts = []string{
	time.RFC3339Nano,
	"2006-01-02T15:04Z07:00",
	"2006-01-02T15:04:05Z07",
	"2006-01-02T15:04Z07",
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04Z07:00",
}

// zonelessLayouts parse a time missing its zone, to say so.
var zonelessLayouts = []string{"2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04"}

// parseSchedule follows Patroni: no time zone is a 400, an unparsable or
// past time a 422.
func parseSchedule(s string, now time.Time) (time.Time, int, string) {
	for _, layout := range scheduleLayouts {
		if at, err := time.Parse(layout, s); err == nil {
			if at.Before(now) {
				return time.Time{}, http.StatusUnprocessableEntity, "Cannot schedule switchover in the past"
			}
			return at, 0, ""
		}
	}
	for _, layout := range zonelessLayouts {
		if _, err := time.Parse(layout, s); err == nil {
			return time.Time{}, http.StatusBadRequest, "Timezone information is mandatory for the scheduled switchover"
		}
	}
	return time.Time{}, http.StatusUnprocessableEntity,
		"Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601 (2006-01-02T15:04:05+00:00)"
}

func (s *Server) restart(ctx context.Context, body []byte) (int, string) {
	if msg := noOptions(body, "restart"); msg != "" {
		return http.StatusBadRequest, msg
	}
	if err := s.backend.Restart(ctx); err != nil {
		return errStatus(err, http.StatusConflict), err.Error()
	}
	return http.StatusOK, "restarted successfully"
}

func (s *Server) reinitialize(ctx context.Context, body []byte) (int, string) {
	if msg := noOptions(body, "reinitialize"); msg != "" {
		return http.StatusBadRequest, msg
	}
	if err := s.backend.Reinitialize(ctx); err != nil {
		return errStatus(err, http.StatusConflict), err.Error()
	}
	return http.StatusOK, "reinitialize started"
}

// noOptions accepts an empty body, null or {} and explains anything else:
// pharos takes none of Patroni's restart or reinitialize options.
func noOptions(body []byte, action string) string {
	if len(bytes.TrimSpace(body)) == 0 {
		return ""
	}
	var opts map[string]json.RawMessage
	if err := decodeObject(body, &opts); err != nil {
		return err.Error()
	}
	if len(opts) == 0 {
		return ""
	}
	var names []string
	for k := range opts {
		names = append(names, k)
	}
	slices.Sort(names)
	return fmt.Sprintf("%s takes no options, got: %s", action, strings.Join(names, ", "))
}

// decodeObject decodes a body holding exactly one JSON object (or null).
func decodeObject(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errors.New("request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body is not a JSON object: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("request body has data after the JSON object")
	}
	return nil
}

func errStatus(err error, conflict int) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, ErrConflict):
		return conflict
	default:
		return http.StatusServiceUnavailable
	}
}
