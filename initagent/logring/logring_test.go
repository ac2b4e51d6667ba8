package logring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestHandlerSplitsByPart(t *testing.T) {
	r := New(100)
	var out strings.Builder
	log := slog.New(r.Handler(slog.NewTextHandler(&out, nil)))
	log.Info("booting", "n", 1)
	log.With("part", "dns").Info("serving", "addr", "127.0.0.53:53")
	log.With("part", "dns").WithGroup("up").With("x", 2).Warn("slow")
	if got := r.Tail(Agent, 0, 0); len(got) != 1 || !strings.Contains(got[0].Text, `msg=booting n=1`) {
		t.Errorf("agent lines %+v", got)
	}
	dns := r.Tail("dns", 0, 0)
	if len(dns) != 2 || !strings.Contains(dns[0].Text, "part=dns") || !strings.Contains(dns[1].Text, "up.x=2") {
		t.Errorf("dns lines %+v", dns)
	}
	if !strings.Contains(out.String(), "msg=serving") {
		t.Error("records not passed on to the next handler")
	}
	if all := r.Tail("", 2, 0); len(all) != 2 || all[0].Service != "dns" {
		t.Errorf("last two of all: %+v", all)
	}
}

func TestRingWrapsAndWriterSplitsLines(t *testing.T) {
	r := New(3)
	w := r.Writer("kubelet")
	fmt.Fprint(w, "one\ntwo\nthr")
	fmt.Fprint(w, "ee\nfour\n")
	var texts []string
	for _, l := range r.Tail("kubelet", 0, 0) {
		texts = append(texts, l.Text)
	}
	if strings.Join(texts, ",") != "two,three,four" {
		t.Errorf("lines %v, want the last three", texts)
	}
}

func TestFollowSendsTailThenNewLines(t *testing.T) {
	r := New(100)
	r.Add("a", "old")
	r.Add("b", "other")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		done <- r.Follow(ctx, "a", 10, func(l Line) error { got <- l.Text; return nil })
	}()
	if s := <-got; s != "old" {
		t.Fatalf("first line %q", s)
	}
	r.Add("b", "skip")
	r.Add("a", "new")
	if s := <-got; s != "new" {
		t.Fatalf("followed line %q", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	stop := errors.New("client gone")
	r.Add("a", "x")
	if err := r.Follow(context.Background(), "a", 1, func(Line) error { return stop }); err != stop {
		t.Errorf("follow returned %v, want the send error", err)
	}
}
