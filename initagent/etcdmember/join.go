package etcdmember

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"
)

// Joiner enters a node into an existing etcd cluster as a learner and
// promotes it once it has caught up, as kubeadm and Talos do: a slow
// joiner never counts towards quorum before it can vote.
type Joiner struct {
	Client  *Client
	Name    string // the node's member name (its node name)
	PeerURL string // https://<node address>:2380
	Log     *slog.Logger
	// Backoff is the first wait between add and promote attempts (doubling to
	// 10 s); zero means 1 s.
	Backoff time.Duration
}

// Join adds the node as a learner, first removing the member this node was
// before its data was lost (same name or peer URL) when quorum allows. It
// returns the new member and the initial-cluster value for the node's
// etcd (every started member and this one, name=peerURL).
func (j *Joiner) Join(ctx context.Context) (Member, string, error) {
	members, _, err := j.Client.MemberList(ctx)
	if err != nil {
		return Member{}, "", fmt.Errorf("list etcd members: %w", err)
	}
	for _, m := range members {
		if m.Name != j.Name && !slices.Contains(m.PeerURLs, j.PeerURL) {
			continue
		}
		if err := j.CanRemove(ctx, members, m); err != nil {
			return Member{}, "", err
		}
		if err := j.Client.MemberRemove(ctx, m.ID); err != nil {
			return Member{}, "", fmt.Errorf("remove stale etcd member %x (%s): %w", m.ID, memberName(m), err)
		}
		j.Log.Info("etcd stale member removed", "member", fmt.Sprintf("%x", m.ID), "name", m.Name,
			"peerURLs", strings.Join(m.PeerURLs, ","), "learner", m.IsLearner)
	}
	var self Member
	wait := j.backoff()
	for attempt := 1; ; attempt++ {
		self, members, err = j.Client.MemberAdd(ctx, []string{j.PeerURL}, true)
		if err == nil {
			break
		}
		// The add may have been applied though its answer says otherwise
		// (seen right after a removal): then the learner is there.
		if list, _, lerr := j.Client.MemberList(ctx); lerr == nil {
			if i := slices.IndexFunc(list, func(m Member) bool { return !m.Started() && slices.Contains(m.PeerURLs, j.PeerURL) }); i >= 0 {
				self, members, err = list[i], list, nil
				break
			}
		}
		// etcd refuses changes until every voter has been connected a
		// while (strict reconfig check), e.g. just after a promotion,
		// answers "member not found" while a removal is being applied, and
		// takes one learner at a time (--max-learners 1): control planes
		// that join together enter one after the other.
		// A timeout is ambiguous (two changes proposed at once: raft takes
		// one): retried, and the list above finds the learner if it was added.
		var ae *APIError
		if errors.As(err, &ae) && !retryableAdd(err) {
			break
		}
		j.Log.Debug("etcd refuses a new member for now", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return Member{}, "", fmt.Errorf("add etcd learner %s: %w (last: %v)", j.PeerURL, ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
	if err != nil {
		return Member{}, "", fmt.Errorf("add etcd learner %s: %w", j.PeerURL, err)
	}
	j.Log.Info("etcd member added as learner", "member", fmt.Sprintf("%x", self.ID), "name", j.Name, "peerURL", j.PeerURL)
	return self, InitialCluster(members, j.Name, j.PeerURL), nil
}

// CanRemove refuses to remove stale when the voting members left after it
// that answer would be fewer than the quorum of the cluster without it.
func (j *Joiner) CanRemove(ctx context.Context, members []Member, stale Member) error {
	var remaining []Member
	for _, m := range members {
		if m.ID != stale.ID && !m.IsLearner {
			remaining = append(remaining, m)
		}
	}
	quorum := len(remaining)/2 + 1
	healthy := 0
	var down []string
	for _, m := range remaining {
		if j.healthy(ctx, m) {
			healthy++
		} else {
			down = append(down, memberName(m))
		}
	}
	if healthy < quorum {
		return fmt.Errorf("stale etcd member %s not removed: only %d of the %d other voting members answer (down: %s), fewer than the quorum of %d",
			memberName(stale), healthy, len(remaining), strings.Join(down, ", "), quorum)
	}
	return nil
}

func (j *Joiner) healthy(ctx context.Context, m Member) bool {
	for _, u := range m.ClientURLs {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		id, err := j.Client.Status(sctx, u)
		cancel()
		if err == nil && id == m.ID {
			return true
		}
	}
	return false
}

// Promote promotes the learner memberID, retrying with backoff while etcd
// refuses (the learner is not in sync yet); it returns when the member
// votes, or with ctx's error.
func (j *Joiner) Promote(ctx context.Context, memberID uint64) error {
	wait := j.backoff()
	for attempt := 1; ; attempt++ {
		err := j.Client.MemberPromote(ctx, memberID)
		if err == nil {
			j.Log.Info("etcd learner promoted", "member", fmt.Sprintf("%x", memberID), "attempts", attempt)
			return nil
		}
		// Promoted already (by an earlier attempt whose answer was lost)?
		if members, _, lerr := j.Client.MemberList(ctx); lerr == nil {
			for _, m := range members {
				if m.ID == memberID && !m.IsLearner {
					j.Log.Info("etcd learner promoted", "member", fmt.Sprintf("%x", memberID), "attempts", attempt)
					return nil
				}
			}
		}
		j.Log.Debug("etcd learner not promoted yet", "member", fmt.Sprintf("%x", memberID), "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("promote etcd learner %x: %w (last: %v)", memberID, ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

func retryableAdd(err error) bool {
	for _, m := range []string{"unhealthy cluster", "member not found", "too many learner"} {
		if strings.Contains(err.Error(), m) {
			return true
		}
	}
	return false
}

func (j *Joiner) backoff() time.Duration {
	if j.Backoff == 0 {
		return time.Second
	}
	return j.Backoff
}

// InitialCluster is etcd's --initial-cluster for a member joining the
// cluster of members: every started member and the joiner, name=peerURL.
func InitialCluster(members []Member, name, peerURL string) string {
	entries := []string{name + "=" + peerURL}
	for _, m := range members {
		if !m.Started() || m.Name == name {
			continue
		}
		for _, u := range m.PeerURLs {
			entries = append(entries, m.Name+"="+u)
		}
	}
	sort.Strings(entries)
	return strings.Join(entries, ",")
}

func memberName(m Member) string {
	if m.Name != "" {
		return fmt.Sprintf("%s (%x)", m.Name, m.ID)
	}
	return fmt.Sprintf("%x (%s, never started)", m.ID, strings.Join(m.PeerURLs, ","))
}

// MemberName names a member for messages: its name and ID, or its peer
// URLs when it never started.
func MemberName(m Member) string { return memberName(m) }
