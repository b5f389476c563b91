package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestStatusPageInABrowser opens the agent's status page in a real
// headless Chromium: the page shows the fleet of the agent and its
// instances, and when an instance is killed it shows the kill and the
// replacement without a reload. Screenshots of the main views go to
// build/screenshots (or $IMMUTD_E2E_ARTIFACTS) as test artifacts.
func TestStatusPageInABrowser(t *testing.T) {
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: run .ci/ensure-browser (make test does)")
	}
	e := newEnv(t, envOpts{})
	e.writeFleet("web.hcl", fleetFile("web", 3, "v1", ""))
	e.start()
	f := e.waitHealthy("web", 3, "", 30*time.Second)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1500, 1000), chromedp.Flag("disable-gpu", true))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelTimeout()

	must(t, chromedp.Do(ctx, chromedp.Navigate("http://"+e.httpAddr+"/"), chromedp.WaitVisible(`tr[data-fleet="web"]`)))
	title := evaluate[string](t, ctx, `document.title`)
	rows := evaluate[int](t, ctx, `document.querySelectorAll('tr[data-instance]').length`)
	// A mark that a reload would wipe.
	evaluate[string](t, ctx, `window.immutdLoaded = "yes"`)
	if rows != 3 || title != "immutd · e2e" {
		t.Fatalf("page %q shows %d instance rows, want 3 of fleet web", title, rows)
	}
	shot(t, ctx, "status-page")

	victim := f.Instances[0]
	if err := syscall.Kill(localPID(t, victim), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The page updates itself: the kill shows in the event log, and the
	// victim's row goes, with no reload.
	sel := fmt.Sprintf(`tr[data-action="terminated"] a[href="/ui/?instance=%s"]`, victim.ID)
	deadline := time.Now().Add(time.Minute)
	for {
		seen := evaluate[bool](t, ctx, fmt.Sprintf(`document.querySelector(%q) !== null`, sel))
		gone := evaluate[bool](t, ctx, fmt.Sprintf(`document.querySelector('tr[data-instance=%q]') === null && document.querySelectorAll('tr[data-instance]').length === 3`, victim.ID))
		mark := evaluate[string](t, ctx, `String(window.immutdLoaded)`)
		if mark != "yes" {
			t.Fatal("the page was reloaded; it should update in place")
		}
		if seen && gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the page did not show the kill of %s within a minute (event shown %v, replaced %v)", victim.ID, seen, gone)
		}
		time.Sleep(200 * time.Millisecond)
	}
	shot(t, ctx, "status-page-after-kill")

	// The event log filtered to the killed instance.
	must(t, chromedp.Do(ctx, chromedp.Navigate("http://"+e.httpAddr+"/ui/?instance="+victim.ID),
		chromedp.WaitVisible(`tr[data-action="terminated"]`)))
	shot(t, ctx, "status-page-instance")
}

// shot saves a screenshot of the whole page as NAME.png in the artifacts
// directory.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("IMMUTD_E2E_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(repoRoot, "build", "screenshots")
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	must(t, err)
	must(t, os.MkdirAll(dir, 0o755))
	path := filepath.Join(dir, name+".png")
	must(t, os.WriteFile(path, png, 0o644))
	t.Logf("screenshot %s (%d bytes)", path, len(png))
}

// evaluate runs a JavaScript expression in the page and returns its value.
func evaluate[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	must(t, err)
	return v
}
