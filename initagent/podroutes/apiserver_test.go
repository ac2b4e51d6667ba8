package podroutes

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	"github.com/ballast-os/ballast/initagent/runtime"
)

// apiServer is the peer of the tests: an HTTP server that answers
// GET /api/v1/nodes (a NodeList) and GET /api/v1/nodes?watch=true&resourceVersion=N
// (a stream of ADDED/MODIFIED/DELETED events after N) in the shapes
// kube-apiserver uses, from an in-memory history of Node objects.
type apiServer struct {
	*httptest.Server

	mu        sync.Mutex
	rv        int
	nodes     map[string]map[string]any
	history   []watchEvent
	compacted int           // watches from before this version get 410 Gone
	changed   chan struct{} // closed and replaced on every change
	cut       chan struct{} // closed and replaced to end every open watch
	lists     int
}

type watchEvent struct {
	rv   int
	Type string         `json:"type"`
	Obj  map[string]any `json:"object"`
}

func newAPIServer(t *testing.T) *apiServer {
	a := &apiServer{nodes: map[string]map[string]any{}, changed: make(chan struct{}), cut: make(chan struct{}), rv: 100}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(func() {
		a.cutWatches()
		a.Close()
	})
	return a
}

// client is a real KubeClient for the server.
func (a *apiServer) client() *runtime.KubeClient {
	return &runtime.KubeClient{Server: a.URL, HTTP: a.Server.Client()}
}

// nodeObject is a Node in the API's JSON shape.
func nodeObject(name string, internalIPs []string, podCIDRs []string) map[string]any {
	var addrs []any
	for _, ip := range internalIPs {
		addrs = append(addrs, map[string]any{"type": "InternalIP", "address": ip})
	}
	addrs = append(addrs, map[string]any{"type": "Hostname", "address": name})
	spec := map[string]any{}
	if len(podCIDRs) > 0 {
		spec["podCIDR"] = podCIDRs[0]
		spec["podCIDRs"] = podCIDRs
	}
	return map[string]any{
		"kind": "Node", "apiVersion": "v1",
		"metadata": map[string]any{"name": name, "labels": map[string]any{"kubernetes.io/hostname": name}},
		"spec":     spec,
		"status": map[string]any{
			"addresses":  addrs,
			"conditions": []any{map[string]any{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}},
		},
	}
}

// set adds or changes a node and tells the watchers.
func (a *apiServer) set(name string, internalIPs []string, podCIDRs ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	typ := "MODIFIED"
	if _, ok := a.nodes[name]; !ok {
		typ = "ADDED"
	}
	a.record(typ, name, nodeObject(name, internalIPs, podCIDRs))
}

// remove deletes a node and tells the watchers.
func (a *apiServer) remove(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.record("DELETED", name, a.nodes[name])
}

func (a *apiServer) record(typ, name string, obj map[string]any) {
	a.rv++
	obj["metadata"].(map[string]any)["resourceVersion"] = strconv.Itoa(a.rv)
	if typ == "DELETED" {
		delete(a.nodes, name)
	} else {
		a.nodes[name] = obj
	}
	a.history = append(a.history, watchEvent{rv: a.rv, Type: typ, Obj: obj})
	close(a.changed)
	a.changed = make(chan struct{})
}

// compact forgets the history, as etcd compaction does: a watch from an
// older version gets 410 Gone.
func (a *apiServer) compact() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.history = nil
	a.compacted = a.rv
}

// removeUnseen deletes a node while ending every watch first, and forgets
// the history, so no watcher sees the deletion: only a fresh list does.
func (a *apiServer) removeUnseen(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	close(a.cut)
	a.cut = make(chan struct{})
	a.rv++
	delete(a.nodes, name)
	a.history = nil
	a.compacted = a.rv
}

// cutWatches ends every open watch stream, as an apiserver restart does.
func (a *apiServer) cutWatches() {
	a.mu.Lock()
	defer a.mu.Unlock()
	close(a.cut)
	a.cut = make(chan struct{})
}

func (a *apiServer) listCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lists
}

func (a *apiServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/api/v1/nodes" || r.Method != http.MethodGet {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	q := r.URL.Query()
	if q.Get("watch") != "true" && q.Get("watch") != "1" {
		a.mu.Lock()
		a.lists++
		items := []any{}
		for _, n := range a.nodes {
			items = append(items, n)
		}
		list := map[string]any{"kind": "NodeList", "apiVersion": "v1",
			"metadata": map[string]any{"resourceVersion": strconv.Itoa(a.rv)}, "items": items}
		a.mu.Unlock()
		_ = json.NewEncoder(w).Encode(list)
		return
	}
	from, err := strconv.Atoi(q.Get("resourceVersion"))
	if err != nil {
		http.Error(w, `{"kind":"Status","code":400,"message":"resourceVersion: not a number"}`, http.StatusBadRequest)
		return
	}
	enc := json.NewEncoder(w)
	flusher := w.(http.Flusher)
	a.mu.Lock()
	cut := a.cut // this stream ends with the next cut, whenever it comes
	if from < a.compacted {
		a.mu.Unlock()
		_ = enc.Encode(map[string]any{"type": "ERROR", "object": map[string]any{
			"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410,
			"message": fmt.Sprintf("too old resource version: %d (%d)", from, a.compacted)}})
		return
	}
	a.mu.Unlock()
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	for {
		a.mu.Lock()
		var pending []watchEvent
		for _, e := range a.history {
			if e.rv > from {
				pending = append(pending, e)
			}
		}
		changed := a.changed
		a.mu.Unlock()
		for _, e := range pending {
			if err := enc.Encode(e); err != nil {
				return
			}
			from = e.rv
		}
		flusher.Flush()
		select {
		case <-changed:
		case <-cut:
			return
		case <-r.Context().Done():
			return
		}
	}
}
