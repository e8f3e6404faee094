package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mlsgate/mlsgate/agent"
)

func TestAttachWait(t *testing.T) {
	asked := 0
	do := func(context.Context) (agent.Status, error) {
		asked++
		return agent.Status{Guests: []agent.GuestStatus{{GuestSpec: agent.GuestSpec{Interface: "vif3.0"}, Present: true, Attached: asked >= 3}}}, nil
	}
	if err := (&attachWait{d: 10 * time.Second}).run(context.Background(), do, "vif3.0"); err != nil || asked != 3 {
		t.Fatalf("wait: %v after %d status reads, want nil after 3", err, asked)
	}
	asked = 0
	if err := (&attachWait{}).run(context.Background(), do, "vif3.0"); err != nil || asked != 0 {
		t.Errorf("no --wait: %v, %d status reads", err, asked)
	}
	err := (&attachWait{d: 50 * time.Millisecond}).run(context.Background(), do, "vif4.0")
	if err == nil || !strings.Contains(err.Error(), "did not attach") {
		t.Errorf("never attached: %v", err)
	}
	fail := func(context.Context) (agent.Status, error) {
		return agent.Status{}, errors.New("agent at unix:/run/mlsgate/agent.sock: connection refused")
	}
	if err := (&attachWait{d: time.Second}).run(context.Background(), fail, "vif3.0"); err == nil {
		t.Error("a failing agent was taken for an attached interface")
	}
}
