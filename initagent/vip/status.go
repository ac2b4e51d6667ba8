package vip

import "time"

// State is a virtual router's state (RFC 5798 §6.4, plus fault).
type State string

// States.
const (
	StateInit   State = "init"
	StateBackup State = "backup"
	StateMaster State = "master"
	// StateFault: a fault track failed; the router holds no VIPs and
	// ignores adverts until it recovers.
	StateFault State = "fault"
)

// Status is a snapshot of a Speaker.
type Status struct {
	Routers []RouterStatus `json:"routers"`
}

// RouterStatus is a snapshot of one virtual router.
type RouterStatus struct {
	Name      string `json:"name"`
	Interface string `json:"interface"`
	VRID      uint8  `json:"vrid"`
	// Family is 4 or 6.
	Family int      `json:"family"`
	VIPs   []string `json:"vips"`
	State  State    `json:"state"`
	// Since is when State was entered.
	Since time.Time `json:"since"`
	// Priority is the configured priority, EffectivePriority the one
	// advertised after failed tracks (0 in the fault state).
	Priority          uint8 `json:"priority"`
	EffectivePriority uint8 `json:"effectivePriority"`
	// Source is the address adverts are sent from (empty before the
	// router found one).
	Source string `json:"source,omitempty"`
	// Master is the current master's address (this node's Source when
	// master; empty when unknown) and MasterPriority its advertised
	// priority.
	Master         string `json:"master,omitempty"`
	MasterPriority uint8  `json:"masterPriority"`
	// AdvertIntervalMs is the configured advert interval, in ms.
	AdvertIntervalMs int64 `json:"advertIntervalMs"`
	// Transitions are the most recent state changes, oldest first.
	Transitions []Transition  `json:"transitions"`
	Counters    Counters      `json:"counters"`
	Tracks      []TrackStatus `json:"tracks,omitempty"`
}

// Transition is one state change.
type Transition struct {
	At     time.Time `json:"at"`
	From   State     `json:"from"`
	To     State     `json:"to"`
	Reason string    `json:"reason"`
	// Cause names what triggered it, one of the Cause constants.
	Cause Cause `json:"cause"`
}

// Cause is the machine-readable trigger of a transition.
type Cause string

// Causes.
const (
	CauseStartup      Cause = "startup"
	CauseShutdown     Cause = "shutdown"
	CauseMasterDown   Cause = "master-down-timer"
	CausePriorityZero Cause = "priority-zero-advert"
	CausePreempt      Cause = "preempt"
	CauseHigherPrio   Cause = "higher-priority-advert"
	CauseFault        Cause = "track-fault"
	CauseRecovered    Cause = "track-recovered"
)

// Counters count packets since Run started.
type Counters struct {
	AdvertsSent     uint64 `json:"advertsSent"`
	AdvertsReceived uint64 `json:"advertsReceived"`
	// PriorityZeroSent and PriorityZeroReceived are adverts of priority
	// 0: a master leaving.
	PriorityZeroSent     uint64 `json:"priorityZeroSent"`
	PriorityZeroReceived uint64 `json:"priorityZeroReceived"`
	// DroppedNotPeer: from an address not in Peers.
	DroppedNotPeer uint64 `json:"droppedNotPeer"`
	// DroppedTTL: TTL or hop limit other than 255 (possibly routed from
	// off the link).
	DroppedTTL      uint64 `json:"droppedTTL"`
	DroppedChecksum uint64 `json:"droppedChecksum"`
	// DroppedVersion: not a VRRPv3 advertisement (e.g. VRRPv2).
	DroppedVersion   uint64 `json:"droppedVersion"`
	DroppedMalformed uint64 `json:"droppedMalformed"`
	// OtherVRID: valid adverts of other virtual routers on the link.
	OtherVRID uint64 `json:"otherVRID"`
	// IntervalMismatch: adverts whose interval differs from ours (a
	// backup follows the master's interval, RFC 5798 §6.4.2).
	IntervalMismatch uint64 `json:"intervalMismatch"`
	// TakeoversAvoided: the master down timer expired while the master's
	// adverts waited to be read (this process had stalled), so this backup
	// did not take over.
	TakeoversAvoided uint64 `json:"takeoversAvoided"`
	// LowerPriorityMasters: adverts received as master from another master
	// with a lower priority (a split brain this router ends).
	LowerPriorityMasters uint64 `json:"lowerPriorityMasters"`
	// Announcements: gratuitous ARPs / unsolicited NAs sent.
	Announcements uint64 `json:"announcements"`
	SendErrors    uint64 `json:"sendErrors"`
}

// TrackStatus is a track as a router sees it.
type TrackStatus struct {
	Name    string    `json:"name"`
	Healthy bool      `json:"healthy"`
	Weight  uint8     `json:"weight"`
	Fault   bool      `json:"fault"`
	Reason  string    `json:"reason"`
	Changed time.Time `json:"changed"`
}
