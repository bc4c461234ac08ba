package restapi

import (
	"context"
	"net/http"
)

func (s *Server) serveView(w http.ResponseWriter, r *http.Request, get func(context.Context) (any, error)) {
	ctx, cancel := context.WithTimeout(r.Context(), viewTimeout)
	defer cancel()
	v, err := get(ctx)
	if err != nil {
		s.log.Warn("REST API view failed", "path", r.URL.Path, "err", err)
		writeText(w, r, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, r, http.StatusOK, v)
}

// serveCluster answers GET /cluster: with credentials, checked as for the
// operator calls (401 when wrong), the whole view; without, the view less
// the PostgreSQL parameters. When the API has no credentials configured
// nobody gets the parameters here (ctl show-config reads them from etcd).
func (s *Server) serveCluster(w http.ResponseWriter, r *http.Request) {
	authenticated := false
	if r.Header.Get("Authorization") != "" && (s.cfg.Username != "" || s.cfg.Token != "") {
		if _, ok := s.authorize(w, r); !ok {
			return
		}
		authenticated = true
		// The answer depends on the caller: no shared cache may keep it.
		w.Header().Set("Cache-Control", "no-store")
	}
	w.Header().Set("Vary", "Authorization")
	s.serveView(w, r, func(ctx context.Context) (any, error) { return s.backend.Cluster(ctx, authenticated) })
}
