package runtime

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
)

// TestListAndWatchNodes: a NodeList and a watch stream in kube-apiserver's
// shapes; bookmarks are not passed on and an ERROR event ends the watch
// with its status code.
func TestListAndWatchNodes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/nodes" {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("watch") != "true" {
			fmt.Fprint(w, `{"kind":"NodeList","apiVersion":"v1","metadata":{"resourceVersion":"41"},"items":[
				{"metadata":{"name":"a"},"spec":{"podCIDRs":["10.244.0.0/24"]},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.1"}]}}]}`)
			return
		}
		if rv := r.URL.Query().Get("resourceVersion"); rv != "41" {
			t.Errorf("watch from %q, want 41", rv)
		}
		fmt.Fprintln(w, `{"type":"ADDED","object":{"metadata":{"name":"b","resourceVersion":"42"},"spec":{"podCIDRs":["10.244.1.0/24"]}}}`)
		fmt.Fprintln(w, `{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"43"}}}`)
		fmt.Fprintln(w, `{"type":"MODIFIED","object":{"metadata":{"name":"b","resourceVersion":"44"},"status":{"addresses":[{"type":"InternalIP","address":"10.0.0.2"}]}}}`)
		fmt.Fprintln(w, `{"type":"DELETED","object":{"metadata":{"name":"a","resourceVersion":"45"}}}`)
		fmt.Fprintln(w, `{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Expired","code":410,"message":"too old resource version: 41 (45)"}}`)
	}))
	defer srv.Close()
	c := &KubeClient{Server: srv.URL, HTTP: srv.Client()}

	l, err := c.ListNodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if l.Metadata.ResourceVersion != "41" || len(l.Items) != 1 || l.Items[0].Metadata.Name != "a" ||
		!slices.Equal(l.Items[0].Spec.PodCIDRs, []string{"10.244.0.0/24"}) || !slices.Equal(l.Items[0].InternalIPs(), []string{"10.0.0.1"}) {
		t.Errorf("ListNodes = %+v", l)
	}

	var got []string
	err = c.WatchNodes(context.Background(), l.Metadata.ResourceVersion, func(e NodeEvent) error {
		got = append(got, fmt.Sprintf("%s %s %v %v", e.Type, e.Node.Metadata.Name, e.Node.Spec.PodCIDRs, e.Node.InternalIPs()))
		return nil
	})
	want := []string{"ADDED b [10.244.1.0/24] []", "MODIFIED b [] [10.0.0.2]", "DELETED a [] []"}
	if !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != http.StatusGone {
		t.Errorf("WatchNodes = %v, want an APIError 410", err)
	}

	stop := errors.New("enough")
	n := 0
	err = c.WatchNodes(context.Background(), "41", func(NodeEvent) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("WatchNodes after fn failed = %v after %d events, want fn's error after 1", err, n)
	}
}
