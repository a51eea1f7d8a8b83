package main

import (
	"fmt"

	"github.com/pkcs11-ha/pkcs11-ha/pkcs11ha/inspection"
)

// sessionBudget is the session arithmetic of `check`: replicas × the sessions one replica opens at most,
// against every token's max session count less the sessions others hold.
type sessionBudget struct {
	Replicas int           `json:"replicas"`
	Tokens   []tokenBudget `json:"tokens"`
	// MaxReplicas is the largest replica count every token fits; null when no token states a limit.
	MaxReplicas *int `json:"max_replicas"`
}

// tokenBudget is one token (device, partition).
type tokenBudget struct {
	Device     string                  `json:"device"`
	Partition  string                  `json:"partition"`
	PerReplica int                     `json:"per_replica"` // sessions one replica opens at most: the pool plus the login session
	Needed     int                     `json:"needed"`      // per_replica × replicas
	Max        inspection.SessionCount `json:"max"`         // the token's ulMaxSessionCount
	InUse      inspection.SessionCount `json:"in_use"`      // open by others: the token's ulSessionCount less this check's own
	// MaxReplicas is the largest replica count this token fits; null when it states no limit.
	MaxReplicas *int `json:"max_replicas"`
	Fits        bool `json:"fits"`
}

// budget computes the session budget of every token found on a reachable device.
func budget(rep *inspection.Report, replicas int) sessionBudget {
	b := sessionBudget{Replicas: replicas, Tokens: []tokenBudget{}}
	for _, d := range rep.Devices {
		for _, p := range d.Partitions {
			if p.Token == nil {
				continue
			}
			t := tokenFit(p.SessionsPerClient, replicas, p.Token.MaxSessions, p.Token.Sessions, p.Token.OwnSessions)
			t.Device, t.Partition = d.Name, p.Name
			if t.MaxReplicas != nil && (b.MaxReplicas == nil || *t.MaxReplicas < *b.MaxReplicas) {
				b.MaxReplicas = t.MaxReplicas
			}
			b.Tokens = append(b.Tokens, t)
		}
	}
	return b
}

// tokenFit is the arithmetic for one token: perReplica × replicas sessions must fit in limit less what
// others hold (count less own, this check's sessions; an unknown count is taken as none). A token without
// a limit, or that does not state one, fits any count.
func tokenFit(perReplica, replicas int, limit, count inspection.SessionCount, own int) tokenBudget {
	perReplica = max(perReplica, 1)
	t := tokenBudget{PerReplica: perReplica, Needed: perReplica * replicas, Max: limit, Fits: true,
		InUse: inspection.SessionCount{Kind: inspection.SessionsUnknown}}
	var others uint64
	if count.Kind == inspection.SessionsCount {
		if count.Value > uint64(own) {
			others = count.Value - uint64(own)
		}
		t.InUse = inspection.SessionCount{Kind: inspection.SessionsCount, Value: others}
	}
	if limit.Kind != inspection.SessionsCount {
		return t
	}
	var free uint64
	if limit.Value > others {
		free = limit.Value - others
	}
	n := int(free / uint64(perReplica))
	t.MaxReplicas = &n
	t.Fits = replicas <= n
	return t
}

// countText renders a session count for people.
func countText(c inspection.SessionCount) string {
	switch c.Kind {
	case inspection.SessionsNoLimit:
		return "no limit"
	case inspection.SessionsUnknown:
		return "unknown"
	}
	return fmt.Sprint(c.Value)
}

func replicasText(n *int) string {
	if n == nil {
		return "no limit"
	}
	return fmt.Sprint(*n)
}
