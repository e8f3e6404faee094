package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mlsgate/mlsgate/agent"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// statusView is what 'mlsgate status -o json|yaml' prints: one snake_case
// name per field, lists always present ([] rather than null), whatever
// shape the agent's API answer has.
type statusView struct {
	Ready                bool                         `json:"ready" yaml:"ready"`
	Enforce              bool                         `json:"enforce" yaml:"enforce"`
	Error                string                       `json:"error" yaml:"error"`
	InterfacePatterns    []string                     `json:"interface_patterns" yaml:"interface_patterns"`
	UndeclaredMode       string                       `json:"undeclared_mode" yaml:"undeclared_mode"`
	UndeclaredInterfaces []string                     `json:"undeclared_interfaces" yaml:"undeclared_interfaces"`
	Guests               []guestView                  `json:"guests" yaml:"guests"`
	SAs                  saView                       `json:"sas" yaml:"sas"`
	Peers                int                          `json:"peers" yaml:"peers"`
	MapEntries           mapView                      `json:"map_entries" yaml:"map_entries"`
	Packets              map[string]map[string]uint64 `json:"packets" yaml:"packets"`
}

type guestView struct {
	Interface      string `json:"interface" yaml:"interface"`
	Ifindex        int    `json:"ifindex" yaml:"ifindex"`
	VM             uint32 `json:"vm" yaml:"vm"`
	App            uint32 `json:"app" yaml:"app"`
	Range          string `json:"range" yaml:"range"`
	Addr4          string `json:"addr4" yaml:"addr4"`
	Addr6          string `json:"addr6" yaml:"addr6"`
	HostAddr4      string `json:"host_addr4" yaml:"host_addr4"`
	HostAddr6      string `json:"host_addr6" yaml:"host_addr6"`
	MAC            string `json:"mac" yaml:"mac"`
	Mode           string `json:"mode" yaml:"mode"`
	AllowUnlabeled bool   `json:"allow_unlabeled" yaml:"allow_unlabeled"`
	Present        bool   `json:"present" yaml:"present"`
	Attached       bool   `json:"attached" yaml:"attached"`
	Hook           string `json:"hook" yaml:"hook"`
	NotAttached    string `json:"not_attached" yaml:"not_attached"`
	Unplanned      string `json:"unplanned" yaml:"unplanned"`
}

type saView struct {
	Synced     int `json:"synced" yaml:"synced"`
	Static     int `json:"static" yaml:"static"`
	Unlabeled  int `json:"unlabeled" yaml:"unlabeled"`
	BadContext int `json:"bad_context" yaml:"bad_context"`
	NoGuest    int `json:"no_guest" yaml:"no_guest"`
}

type mapView struct {
	Vifs    int `json:"vifs" yaml:"vifs"`
	Labels  int `json:"labels" yaml:"labels"`
	SASlots int `json:"sa_slots" yaml:"sa_slots"`
	SAs     int `json:"sas" yaml:"sas"`
	Peers   int `json:"peers" yaml:"peers"`
}

func addrString(s fmt.Stringer, valid bool) string {
	if !valid {
		return ""
	}
	return s.String()
}

// newStatusView converts the agent's answer.
func newStatusView(st agent.Status) statusView {
	v := statusView{
		Ready: st.Ready, Enforce: st.Enforce, Error: st.Error,
		InterfacePatterns:    append([]string{}, st.Patterns...),
		UndeclaredMode:       st.Undeclared,
		UndeclaredInterfaces: append([]string{}, st.UndeclaredInterfaces...),
		Guests:               []guestView{},
		SAs:                  saView{Synced: st.SAs.Synced, Static: st.SAs.Static, Unlabeled: st.SAs.Unlabeled, BadContext: st.SAs.BadContext, NoGuest: st.SAs.NoGuest},
		Peers:                st.Peers,
		MapEntries:           mapView{Vifs: st.Maps.Vifs, Labels: st.Maps.Labels, SASlots: st.Maps.Slots, SAs: st.Maps.SAs, Peers: st.Maps.Peers},
		Packets:              map[string]map[string]uint64{"ingress": {}, "egress": {}},
	}
	for dir, m := range st.Counters {
		if v.Packets[dir] == nil {
			v.Packets[dir] = map[string]uint64{}
		}
		for r, n := range m {
			v.Packets[dir][r] = n
		}
	}
	for _, g := range st.Guests {
		mode := g.Enforcement
		if mode == "" { // an agent older than the enforcement field
			mode = "enforce"
			if g.Audit || !st.Enforce {
				mode = "audit"
			}
		}
		if !st.Enforce {
			mode = "audit"
		}
		gv := guestView{
			Interface: g.Interface, Ifindex: g.Ifindex, VM: g.VM, App: g.App, Range: g.Range.String(),
			Addr4: addrString(g.Addr4, g.Addr4.IsValid()), Addr6: addrString(g.Addr6, g.Addr6.IsValid()),
			HostAddr4: addrString(g.HostAddr4, g.HostAddr4.IsValid()), HostAddr6: addrString(g.HostAddr6, g.HostAddr6.IsValid()),
			MAC: g.MAC, Mode: mode, AllowUnlabeled: g.AllowUnlabeled, Present: g.Present, Attached: g.Attached,
			NotAttached: g.NotAttached, Unplanned: g.Unplanned,
		}
		if g.Attached {
			gv.Hook = g.Mode
		} else if gv.NotAttached == "" {
			gv.NotAttached = "not reported by this agent"
			if !g.Present {
				gv.NotAttached = "interface not present"
			}
		}
		v.Guests = append(v.Guests, gv)
	}
	return v
}

var statusOutputs = []string{"table", "json", "yaml"}

func newStatusCmd() *cobra.Command {
	var addr, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "show the agent's guests (and whether each enforces or only audits), SAs, map fill and counters",
		Long: `Show the agent's view, from its Unix socket (root or the socket group): every
declared guest with its MODE, enforce (denied packets are dropped) or audit
(only counted and reported: the guest's audit flag, or enforce off for the
whole agent), whether plain traffic is let through at the default label
(UNLABELED), the HOOK its programs are attached with (tcx, or clsact on older
kernels; adopted: pinned by a previous agent) and, when they are not
attached, why.

-o table (the default) is for people; -o json and -o yaml are for programs:
snake_case field names, every list present (empty as []).`,
		Example: "  mlsgate status\n  mlsgate status -o json | jq '.guests[] | select(.mode == \"audit\")'",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "table", "json", "yaml":
			default:
				return fmt.Errorf("--output %q: want one of %s", output, strings.Join(statusOutputs, ", "))
			}
			c, err := newAgentClient(addr, 5*time.Second)
			if err != nil {
				return err
			}
			var st agent.Status
			if _, err := c.Do(cmd.Context(), "GET", "/v1/status", nil, &st); err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), output, newStatusView(st))
		},
	}
	cmd.Flags().StringVar(&addr, "agent", defaultAgentSocket, "the agent's Unix socket (unix:/path); TCP serves no API")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	return cmd
}

func printStatus(w io.Writer, output string, st statusView) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	case "yaml":
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(st); err != nil {
			return err
		}
		return enc.Close()
	}
	enforce := "on"
	if !st.Enforce {
		enforce = "off (every guest is in audit mode: denials are counted, not dropped)"
	}
	fmt.Fprintf(w, "ready: %v\nenforce: %s\n", st.Ready, enforce)
	if len(st.InterfacePatterns) > 0 {
		fmt.Fprintf(w, "interfaces: %s (undeclared: %s)\n", strings.Join(st.InterfacePatterns, " "), orDash(st.UndeclaredMode))
	}
	if st.Error != "" {
		fmt.Fprintf(w, "last error: %s\n", st.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INTERFACE\tVM\tAPP\tRANGE\tMODE\tUNLABELED\tPRESENT\tHOOK\tNOT ATTACHED")
	audits := 0
	for _, g := range st.Guests {
		if g.Mode == "audit" {
			audits++
		}
		unl := "denied"
		if g.AllowUnlabeled {
			unl = "allowed"
		}
		why := g.NotAttached
		if g.Unplanned != "" {
			why = strings.TrimSpace(why + " unplanned: " + g.Unplanned)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%v\t%s\t%s\n", g.Interface, g.VM, g.App, g.Range, g.Mode, unl, g.Present, orDash(g.Hook), orDash(why))
	}
	tw.Flush()
	if audits > 0 {
		fmt.Fprintf(w, "WARNING: %d guest(s) in audit mode: their denied packets pass\n", audits)
	}
	if len(st.UndeclaredInterfaces) > 0 {
		fmt.Fprintf(w, "undeclared interfaces: %s\n", strings.Join(st.UndeclaredInterfaces, " "))
	}
	fmt.Fprintf(w, "SAs: %d synced, %d static, %d unlabeled, %d with a bad context, %d of no guest; peers: %d\n",
		st.SAs.Synced, st.SAs.Static, st.SAs.Unlabeled, st.SAs.BadContext, st.SAs.NoGuest, st.Peers)
	fmt.Fprintf(w, "map entries: vifs %d, labels %d, sa_slots %d, sas %d, peers %d\n", st.MapEntries.Vifs, st.MapEntries.Labels, st.MapEntries.SASlots, st.MapEntries.SAs, st.MapEntries.Peers)
	for _, dir := range []string{"ingress", "egress"} {
		if len(st.Packets[dir]) == 0 {
			continue
		}
		var parts []string
		for r, n := range st.Packets[dir] {
			parts = append(parts, fmt.Sprintf("%s=%d", r, n))
		}
		fmt.Fprintf(w, "%s packets: %s\n", dir, strings.Join(sorted(parts), " "))
	}
	return nil
}
