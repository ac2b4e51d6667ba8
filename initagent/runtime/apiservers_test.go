package runtime

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
)

// TestAPIServerEndpoints reads the kubernetes service's EndpointSlices as
// the API serves them (two slices, one family each; a not-ready endpoint
// skipped) and asks with the label selector.
func TestAPIServerEndpoints(t *testing.T) {
	const list = `{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","items":[
 {"metadata":{"name":"kubernetes","namespace":"default","labels":{"kubernetes.io/service-name":"kubernetes"}},"addressType":"IPv4",
  "endpoints":[{"addresses":["10.0.0.12"],"conditions":{"ready":true}},{"addresses":["10.0.0.11"],"conditions":{"ready":true}},
   {"addresses":["10.0.0.13"],"conditions":{"ready":false}}],
  "ports":[{"name":"https","protocol":"TCP","port":6443}]},
 {"metadata":{"name":"kubernetes-v6","namespace":"default"},"addressType":"IPv6",
  "endpoints":[{"addresses":["2001:db8::11"],"conditions":{}}],"ports":[{"name":"https","protocol":"TCP","port":6443}]}]}`
	var query string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RequestURI()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(list))
	}))
	defer srv.Close()
	c := &KubeClient{Server: srv.URL, HTTP: srv.Client()}
	got, err := APIServerEndpoints(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.0.11:6443", "10.0.0.12:6443", "[2001:db8::11]:6443"}; !slices.Equal(got, want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
	if query != "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes" {
		t.Errorf("asked %s", query)
	}
}
