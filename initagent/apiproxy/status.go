package apiproxy

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Backend states in BackendStatus.State.
const (
	StateUp       = "up"
	StateDown     = "down"
	StateDraining = "draining"
)

// Status is a snapshot of the proxy for the node API.
type Status struct {
	Healthy     bool             `json:"healthy"` // at least one backend is up
	ActiveConns int64            `json:"activeConns"`
	MaxConns    int              `json:"maxConns"`
	Frontends   []FrontendStatus `json:"frontends"`
	Backends    []BackendStatus  `json:"backends"` // the set in order, then the draining ones
}

// FrontendStatus counts one listening address's connections.
type FrontendStatus struct {
	Addr      string `json:"addr"`
	Listening bool   `json:"listening"`
	Accepted  uint64 `json:"accepted"`
	Refused   uint64 `json:"refused"` // over MaxConns
	Failed    uint64 `json:"failed"`  // no backend could be reached
}

// BackendStatus is one backend's health and traffic.
type BackendStatus struct {
	Addr           string      `json:"addr"`
	State          string      `json:"state"` // StateUp, StateDown or StateDraining
	LastCheck      CheckResult `json:"lastCheck"`
	ActiveConns    int64       `json:"activeConns"`
	TotalConns     uint64      `json:"totalConns"`
	ConnectFails   uint64      `json:"connectFails"`
	ChecksOK       uint64      `json:"checksOK"`
	ChecksFailed   uint64      `json:"checksFailed"`
	BytesToBackend uint64      `json:"bytesToBackend"` // counted when a direction ends
	BytesToClient  uint64      `json:"bytesToClient"`
}

// CheckResult is the outcome of one health check.
type CheckResult struct {
	Time    time.Time     `json:"time"` // zero before the first check
	OK      bool          `json:"ok"`
	Error   string        `json:"error,omitempty"`
	Latency time.Duration `json:"latencyNs"`
}

// Status returns a snapshot of the proxy.
func (p *Proxy) Status() Status {
	st := Status{Healthy: p.Healthy(), ActiveConns: p.active.Load(), MaxConns: p.cfg.MaxConns}
	for _, f := range p.fronts {
		st.Frontends = append(st.Frontends, FrontendStatus{
			Addr:      f.addr,
			Listening: f.listening.Load(),
			Accepted:  f.accepted.Load(),
			Refused:   f.refused.Load(),
			Failed:    f.failed.Load(),
		})
	}
	p.mu.Lock()
	bs := append([]*backend(nil), p.backends...)
	for b := range p.draining {
		bs = append(bs, b)
	}
	st.Backends = make([]BackendStatus, 0, len(bs))
	for _, b := range bs {
		state := StateDown
		switch {
		case b.draining:
			state = StateDraining
		case b.up:
			state = StateUp
		}
		st.Backends = append(st.Backends, BackendStatus{
			Addr:           b.addr,
			State:          state,
			LastCheck:      b.last,
			ActiveConns:    b.active.Load(),
			TotalConns:     b.total.Load(),
			ConnectFails:   b.connectFails.Load(),
			ChecksOK:       b.checksOK.Load(),
			ChecksFailed:   b.checksFailed.Load(),
			BytesToBackend: b.bytesOut.Load(),
			BytesToClient:  b.bytesIn.Load(),
		})
	}
	p.mu.Unlock()
	return st
}

// WriteMetrics writes the proxy's metrics in the Prometheus text exposition
// format (version 0.0.4).
func (p *Proxy) WriteMetrics(w io.Writer) error {
	st := p.Status()
	bw := bufio.NewWriter(w)
	family := func(name, typ, help string) {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}
	sample := func(name string, labels []string, v any) {
		bw.WriteString(name)
		if len(labels) > 0 {
			bw.WriteByte('{')
			for i := 0; i < len(labels); i += 2 {
				if i > 0 {
					bw.WriteByte(',')
				}
				bw.WriteString(labels[i] + "=" + strconv.Quote(labels[i+1]))
			}
			bw.WriteByte('}')
		}
		fmt.Fprintf(bw, " %v\n", v)
	}
	const ns = "ballast_apiproxy_"
	// A draining backend that was added again would repeat its series.
	inSet := map[string]bool{}
	backends := st.Backends[:0:0]
	for _, b := range st.Backends {
		if b.State == StateDraining && inSet[b.Addr] {
			continue
		}
		inSet[b.Addr] = true
		backends = append(backends, b)
	}
	st.Backends = backends
	for _, m := range []struct {
		name, help string
		v          func(FrontendStatus) uint64
	}{
		{"connections_accepted_total", "Client connections accepted.", func(f FrontendStatus) uint64 { return f.Accepted }},
		{"connections_refused_total", "Client connections refused because MaxConns were open.", func(f FrontendStatus) uint64 { return f.Refused }},
		{"connections_failed_total", "Client connections closed because no backend could be reached.", func(f FrontendStatus) uint64 { return f.Failed }},
	} {
		family(ns+m.name, "counter", m.help)
		for _, f := range st.Frontends {
			sample(ns+m.name, []string{"frontend", f.Addr}, m.v(f))
		}
	}
	family(ns+"connections_active", "gauge", "Open client connections.")
	sample(ns+"connections_active", nil, st.ActiveConns)

	family(ns+"backend_up", "gauge", "1 if the backend is up, 0 if down or draining.")
	healthy := 0
	for _, b := range st.Backends {
		up := 0
		if b.State == StateUp {
			up, healthy = 1, healthy+1
		}
		sample(ns+"backend_up", []string{"backend", b.Addr}, up)
	}
	family(ns+"healthy_backends", "gauge", "Backends that are up.")
	sample(ns+"healthy_backends", nil, healthy)
	family(ns+"backend_connections_active", "gauge", "Open connections per backend.")
	for _, b := range st.Backends {
		sample(ns+"backend_connections_active", []string{"backend", b.Addr}, b.ActiveConns)
	}
	family(ns+"backend_connections_total", "counter", "Connections proxied per backend.")
	for _, b := range st.Backends {
		sample(ns+"backend_connections_total", []string{"backend", b.Addr}, b.TotalConns)
	}
	family(ns+"backend_connect_failures_total", "counter", "Failed connects per backend (each marks it down).")
	for _, b := range st.Backends {
		sample(ns+"backend_connect_failures_total", []string{"backend", b.Addr}, b.ConnectFails)
	}
	family(ns+"backend_bytes_total", "counter", "Bytes proxied per backend and direction, counted when a direction ends.")
	for _, b := range st.Backends {
		sample(ns+"backend_bytes_total", []string{"backend", b.Addr, "direction", "to_backend"}, b.BytesToBackend)
		sample(ns+"backend_bytes_total", []string{"backend", b.Addr, "direction", "to_client"}, b.BytesToClient)
	}
	family(ns+"backend_checks_total", "counter", "Health checks per backend and result.")
	for _, b := range st.Backends {
		sample(ns+"backend_checks_total", []string{"backend", b.Addr, "result", "ok"}, b.ChecksOK)
		sample(ns+"backend_checks_total", []string{"backend", b.Addr, "result", "failed"}, b.ChecksFailed)
	}
	return bw.Flush()
}
