// Package etcdmember manages a node's membership in the cluster's stacked
// etcd through etcd's v3 JSON gateway (POST /v3/cluster/member/...), which
// etcd serves on its client port by default: list, add as learner, remove
// a stale member, promote once caught up. No gRPC client is needed.
package etcdmember

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ballast-os/ballast/initagent/api/pki"
)

// Member is one etcd member as the gateway reports it. A member that was
// added but never started has no name.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// Started reports whether the member has run (it has a name once it has).
func (m Member) Started() bool { return m.Name != "" }

// Client talks to an etcd cluster's gateway over HTTPS with a client
// certificate signed by the etcd CA; each call tries the endpoints in turn.
type Client struct {
	Endpoints []string // https://host:2379
	HTTP      *http.Client
}

// NewClient builds a client from PEM credentials.
func NewClient(endpoints []string, caPEM, certPEM, keyPEM []byte) (*Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("etcd client: no CA certificate in the given PEM")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 1,
	}
	return &Client{Endpoints: endpoints, HTTP: &http.Client{Transport: tr, Timeout: 10 * time.Second}}, nil
}

// ClientFromCA signs a short-lived client certificate with the etcd CA
// (PEM certificate and key) and builds a client with it.
func ClientFromCA(endpoints []string, caCertPEM, caKeyPEM []byte, name string) (*Client, error) {
	ca, err := pki.LoadAuthority(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	pair, err := ca.Issue(pki.Request{CommonName: name, Client: true, NotAfter: time.Now().Add(24 * time.Hour)})
	if err != nil {
		return nil, err
	}
	return NewClient(endpoints, caCertPEM, pair.CertPEM, pair.KeyPEM)
}

// CloseIdle closes the client's idle connections.
func (c *Client) CloseIdle() { c.HTTP.CloseIdleConnections() }

// id is a uint64 the gateway writes as a JSON string (protojson), read
// also from a number.
type id uint64

func (i *id) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := strconv.ParseUint(s, 10, 64)
	*i = id(v)
	return err
}

type wireMember struct {
	ID         id       `json:"ID"`
	Name       string   `json:"name"`
	PeerURLs   []string `json:"peerURLs"`
	ClientURLs []string `json:"clientURLs"`
	IsLearner  bool     `json:"isLearner"`
}

func (w wireMember) member() Member {
	return Member{ID: uint64(w.ID), Name: w.Name, PeerURLs: w.PeerURLs, ClientURLs: w.ClientURLs, IsLearner: w.IsLearner}
}

type header struct {
	MemberID id `json:"member_id"`
}

// APIError is an error answer of the gateway (gRPC status in JSON).
type APIError struct {
	Endpoint string
	Code     int    `json:"code"`
	Message  string `json:"message"`
}

func (e *APIError) Error() string { return fmt.Sprintf("etcd at %s: %s", e.Endpoint, e.Message) }

// call POSTs req to one endpoint.
func (c *Client) call(ctx context.Context, endpoint, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(endpoint, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	r.Header.Set("Content-Type", "application/json")
	res, err := c.HTTP.Do(r)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, 4<<20))
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		e := &APIError{Endpoint: endpoint}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%d %s", res.StatusCode, bytes.TrimSpace(data))
		}
		return e
	}
	if resp == nil {
		return nil
	}
	return json.Unmarshal(data, resp)
}

// callAny tries the endpoints in turn and returns the one that answered.
// An error answer of etcd itself is returned at once: another endpoint of
// the same cluster would refuse the same way.
func (c *Client) callAny(ctx context.Context, path string, req, resp any) (string, error) {
	if len(c.Endpoints) == 0 {
		return "", errors.New("etcd client: no endpoints")
	}
	var errs []error
	for _, ep := range c.Endpoints {
		err := c.call(ctx, ep, path, req, resp)
		if err == nil {
			return ep, nil
		}
		// A learner refuses member calls; another endpoint may be a voter.
		var ae *APIError
		if errors.As(err, &ae) && !strings.Contains(ae.Message, "not supported for learner") {
			return ep, err
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return "", errors.Join(errs...)
}

// MemberList lists the members; answeredBy is the endpoint that answered.
func (c *Client) MemberList(ctx context.Context) (members []Member, answeredBy string, err error) {
	var resp struct {
		Members []wireMember `json:"members"`
	}
	// linearizable: a member cut off from the leader must not answer with a stale list.
	answeredBy, err = c.callAny(ctx, "/v3/cluster/member/list", map[string]any{"linearizable": true}, &resp)
	if err != nil {
		return nil, answeredBy, err
	}
	for _, m := range resp.Members {
		members = append(members, m.member())
	}
	return members, answeredBy, nil
}

// MemberAdd adds a member with peerURLs (a learner when learner is set)
// and returns it with the members after the change.
func (c *Client) MemberAdd(ctx context.Context, peerURLs []string, learner bool) (Member, []Member, error) {
	var resp struct {
		Member  wireMember   `json:"member"`
		Members []wireMember `json:"members"`
	}
	if _, err := c.callAny(ctx, "/v3/cluster/member/add", map[string]any{"peerURLs": peerURLs, "isLearner": learner}, &resp); err != nil {
		return Member{}, nil, err
	}
	var members []Member
	for _, m := range resp.Members {
		members = append(members, m.member())
	}
	return resp.Member.member(), members, nil
}

// MemberRemove removes the member with id.
func (c *Client) MemberRemove(ctx context.Context, memberID uint64) error {
	_, err := c.callAny(ctx, "/v3/cluster/member/remove", map[string]string{"ID": strconv.FormatUint(memberID, 10)}, nil)
	return err
}

// MemberPromote makes the learner with id a voting member; etcd refuses
// while the learner is not in sync with the leader.
func (c *Client) MemberPromote(ctx context.Context, memberID uint64) error {
	_, err := c.callAny(ctx, "/v3/cluster/member/promote", map[string]string{"ID": strconv.FormatUint(memberID, 10)}, nil)
	return err
}

// Status asks one member (by its client URL) for its status and returns
// its member ID: the member is up and part of a cluster with a leader.
func (c *Client) Status(ctx context.Context, endpoint string) (uint64, error) {
	var resp struct {
		Header header `json:"header"`
		Leader id     `json:"leader"`
	}
	if err := c.call(ctx, endpoint, "/v3/maintenance/status", struct{}{}, &resp); err != nil {
		return 0, err
	}
	if resp.Leader == 0 {
		return 0, fmt.Errorf("etcd at %s has no leader", endpoint)
	}
	return uint64(resp.Header.MemberID), nil
}
