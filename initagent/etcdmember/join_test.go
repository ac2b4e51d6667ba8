package etcdmember_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballast-os/ballast/initagent/etcdmember"
	"github.com/ballast-os/ballast/initagent/etcdmember/etcdtest"
)

var lastLogs *syncBuffer

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// join enters m into the cluster c reaches as a learner, starts it with
// the initial-cluster Join computed, and promotes it.
func join(t *testing.T, ctx context.Context, ca *etcdtest.CA, c *etcdmember.Client, m *etcdtest.Member, log *slog.Logger) etcdmember.Member {
	t.Helper()
	j := &etcdmember.Joiner{Client: c, Name: m.Name, PeerURL: m.PeerURL(), Log: log, Backoff: 100 * time.Millisecond}
	self, initial, err := j.Join(ctx)
	if err != nil {
		if lastLogs != nil {
			t.Log(lastLogs.String())
		}
		t.Fatal(err)
	}
	if !self.IsLearner || self.Started() {
		t.Fatalf("%s joined as %+v, want an unstarted learner", m.Name, self)
	}
	if !strings.Contains(initial, m.Name+"="+m.PeerURL()) {
		t.Fatalf("initial-cluster %q lacks the joiner", initial)
	}
	m.Start(t, ca, initial, "existing")
	// The learner first: it refuses member calls, and the client goes on to a voter.
	viaLearner := ca.Client(t, append([]string{m.ClientURL()}, c.Endpoints...)...)
	if _, answered, err := viaLearner.MemberList(ctx); err != nil || answered == m.ClientURL() {
		t.Errorf("member list with the learner first: answered by %s, %v; want a voter's answer", answered, err)
	}
	j.Client = viaLearner
	if err := j.Promote(ctx, self.ID); err != nil {
		t.Fatal(err)
	}
	return self
}

func started(t *testing.T, ctx context.Context, c *etcdmember.Client) map[string]etcdmember.Member {
	t.Helper()
	members, _, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]etcdmember.Member{}
	for _, m := range members {
		out[m.Name] = m
	}
	return out
}

// TestJoinPromoteAndRejoinAfterWipe runs real etcd members: one
// bootstraps, two join as learners and are promoted; the third's data is
// wiped and it joins again: its stale member is removed and it re-enters
// as a new member, and the cluster ends with three started voting members.
func TestJoinPromoteAndRejoinAfterWipe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ca := etcdtest.NewCA(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lastLogs = &logs

	a, b, cm := etcdtest.NewMember(t, "a"), etcdtest.NewMember(t, "b"), etcdtest.NewMember(t, "c")
	a.Bootstrap(t, ca)
	client := ca.Client(t, a.ClientURL())
	join(t, ctx, ca, client, b, log)
	client = ca.Client(t, a.ClientURL(), b.ClientURL())
	first := join(t, ctx, ca, client, cm, log)

	got := started(t, ctx, client)
	if len(got) != 3 || got["b"].IsLearner || got["c"].IsLearner {
		t.Fatalf("after two joins: %+v, want a, b, c started voters", got)
	}
	if !strings.Contains(logs.String(), `msg="etcd member added as learner"`) || !strings.Contains(logs.String(), `msg="etcd learner promoted"`) {
		t.Errorf("milestones not logged:\n%s", logs.String())
	}

	// The disk of c is wiped: its etcd is gone with its data.
	cm.Stop()
	if err := os.RemoveAll(cm.DataDir); err != nil {
		t.Fatal(err)
	}
	second := join(t, ctx, ca, client, cm, log)
	if second.ID == first.ID {
		t.Errorf("rejoined with the old member ID %x", first.ID)
	}
	if !strings.Contains(logs.String(), `msg="etcd stale member removed"`) {
		t.Errorf("stale member removal not logged:\n%s", logs.String())
	}
	got = started(t, ctx, client)
	if len(got) != 3 || got["c"].ID != second.ID || got["c"].IsLearner {
		t.Fatalf("after the rejoin: %+v, want a, b and the new c as voters", got)
	}
}

// TestCanRemoveKeepsQuorum: with one of three voters down, removing a
// healthy one would leave one of two answering, below quorum: refused;
// removing the down one is allowed.
func TestCanRemoveKeepsQuorum(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ca := etcdtest.NewCA(t)
	log := slog.New(slog.DiscardHandler)
	a, b, cm := etcdtest.NewMember(t, "a"), etcdtest.NewMember(t, "b"), etcdtest.NewMember(t, "c")
	a.Bootstrap(t, ca)
	client := ca.Client(t, a.ClientURL())
	join(t, ctx, ca, client, b, log)
	client = ca.Client(t, a.ClientURL(), b.ClientURL())
	join(t, ctx, ca, client, cm, log)
	b.Stop()

	members := started(t, ctx, ca.Client(t, a.ClientURL(), cm.ClientURL()))
	var list []etcdmember.Member
	for _, m := range members {
		list = append(list, m)
	}
	j := &etcdmember.Joiner{Client: client, Log: log}
	if err := j.CanRemove(ctx, list, members["a"]); err == nil || !strings.Contains(err.Error(), "fewer than the quorum of 2") {
		t.Errorf("removing a healthy member with another down: %v, want a refusal naming the quorum", err)
	}
	if err := j.CanRemove(ctx, list, members["b"]); err != nil {
		t.Errorf("removing the down member: %v", err)
	}
}

// TestConcurrentJoins: two members join at once; etcd takes one learner
// at a time, so the second waits until the first is promoted, and both end
// as voters.
func TestConcurrentJoins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ca := etcdtest.NewCA(t)
	log := slog.New(slog.DiscardHandler)
	a := etcdtest.NewMember(t, "a")
	a.Bootstrap(t, ca)
	type joined struct {
		m       *etcdtest.Member
		j       *etcdmember.Joiner
		self    etcdmember.Member
		initial string
		err     error
	}
	results := make(chan joined, 2)
	for _, m := range []*etcdtest.Member{etcdtest.NewMember(t, "b"), etcdtest.NewMember(t, "c")} {
		j := &etcdmember.Joiner{Client: ca.Client(t, a.ClientURL()), Name: m.Name, PeerURL: m.PeerURL(), Log: log, Backoff: 100 * time.Millisecond}
		go func() {
			self, initial, err := j.Join(ctx)
			results <- joined{m, j, self, initial, err}
		}()
	}
	for range 2 {
		r := <-results
		if r.err != nil {
			t.Fatalf("%s: %v", r.m.Name, r.err)
		}
		r.m.Start(t, ca, r.initial, "existing")
		if err := r.j.Promote(ctx, r.self.ID); err != nil {
			t.Fatal(err)
		}
	}
	got := started(t, ctx, ca.Client(t, a.ClientURL()))
	if len(got) != 3 || got["b"].IsLearner || got["c"].IsLearner {
		t.Fatalf("members %+v, want a, b, c as voters", got)
	}
}
