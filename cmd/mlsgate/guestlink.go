package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/mlsgate/mlsgate/agent"
)

// attachWait is `mlsgate guest set --wait`: after declaring, wait until the
// agent reports its programs attached to the interface, so a caller (the
// vif hotplug script, deploy/xen/vif-mlsgate) brings the interface up only
// then.
type attachWait struct{ d time.Duration }

func (w *attachWait) flags(f *pflag.FlagSet) {
	f.DurationVar(&w.d, "wait", 0, "after declaring, wait up to this long until the agent reports the interface attached")
}

// run polls the agent's status (the agent client's Status) every 20 ms, up
// to the wait, until the guest on iface is present and attached. No wait
// asked: it returns at once.
func (w *attachWait) run(ctx context.Context, status func(context.Context) (agent.Status, error), iface string) error {
	if w.d <= 0 {
		return nil
	}
	deadline := time.Now().Add(w.d)
	for {
		st, err := status(ctx)
		if err != nil {
			return err
		}
		for _, gs := range st.Guests {
			if gs.Interface == iface && gs.Present && gs.Attached {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s declared, but the agent did not attach to it within %v (does it exist, and match the agent's --interfaces?)", iface, w.d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
