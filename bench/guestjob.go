package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/mlsgate/mlsgate/loader/image"
)

// guestRun is one measurement that runs inside a guest VM: this package's
// test binary, booted in img with share mounted at /mnt, runs test (a
// TestXxxGuestJob that reads the job file env names), and writes its result
// as JSON to share/result.
type guestRun struct {
	what    string // names the measurement in messages ("netns", "xfrm")
	img     *image.Image
	share   string // host directory the guest sees at /mnt
	test    string // -test.run pattern
	env     string // the variable that names the job file in the guest
	job     any    // written to share/job.json
	result  string // file name under share the guest writes
	timeout time.Duration
	memory  int
	// progress gets the guest's output lines.
	progress func(string, ...any)
}

// run builds the test binary into share, writes the job, boots the guest
// and decodes its result into out. It returns the guest's run for its
// accelerator.
func (j guestRun) run(ctx context.Context, out any) (*image.Result, error) {
	testBin := filepath.Join(j.share, "bench.test")
	j.progress("%s: building the bench test binary for the guest", j.what)
	if err := buildGuestBinary(ctx, "github.com/mlsgate/mlsgate/bench", testBin); err != nil {
		return nil, err
	}
	jb, err := json.Marshal(j.job)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(j.share, "job.json"), jb, 0o644); err != nil {
		return nil, err
	}
	res, err := j.img.Run(ctx, image.RunOptions{
		Binary: testBin, Args: []string{"-test.run", j.test, "-test.v", "-test.count", "1", "-test.timeout", (j.timeout - 5*time.Minute).String()},
		Share: j.share, Memory: j.memory, Timeout: j.timeout,
		Env:      map[string]string{j.env: "/mnt/job.json"},
		Progress: progressWriter(j.progress, j.what+" (in guest): "),
	})
	if err != nil {
		return nil, fmt.Errorf("the %s measurement in the guest kernel: %w", j.what, err)
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("the %s measurement in the guest kernel failed (exit %d):\n%s", j.what, res.ExitCode, tail(res.Output, 3000))
	}
	b, err := os.ReadFile(filepath.Join(j.share, j.result))
	if err != nil {
		return nil, fmt.Errorf("the guest wrote no %s result: %w\n%s", j.what, err, tail(res.Output, 2000))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("the guest's %s result: %w", j.what, err)
	}
	return res, nil
}

// buildGuestBinary builds the tests of pkg for a guest from the source
// tree this package was compiled from, so that a bench binary measures its
// own code and not the module the working directory happens to hold (which
// it did: run from another worktree, it measured that worktree's code).
// Built with -trimpath, the tree is unknown and the working directory's
// module is used.
func buildGuestBinary(ctx context.Context, pkg, out string) error {
	dir := ""
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dir = filepath.Dir(file)
		if _, err := os.Stat(file); err != nil {
			return fmt.Errorf("build %s for the guest: this binary was built from %s, which is gone (%v): rebuild mlsgate from a source tree, or run the bench from one with go test", pkg, dir, err)
		}
	}
	return image.BuildTestBinaryIn(ctx, dir, pkg, out)
}

// readGuestJob is the guest side's first step: decode the job file the
// host wrote.
func readGuestJob(path string, job any) error {
	jb, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(jb, job); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
