package local

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/immutd/immutd/internal/instance"
)

// benchInstance launches the sample app (an image of about 8 MB, as
// make images builds) in a real instance directory.
func benchInstance(b *testing.B, noCache bool) (*Provider, instance.Observed) {
	b.Helper()
	p, err := New(Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	p.noCache = noCache
	p.racyWindow = testRacyWindow
	bundle := makeBenchBundle(b)
	digest, err := p.Import(b.Context(), bundle)
	if err != nil {
		b.Fatal(err)
	}
	obs, err := p.Launch(b.Context(), instance.LaunchRequest{InstanceID: "web-1", Fleet: "web", ImageDigest: digest})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := p.Terminate(context.Background(), "web-1", 0); err != nil {
			b.Error(err)
		}
	})
	return p, obs
}

func runInspectBench(b *testing.B, p *Provider, obs instance.Observed) {
	start := p.hashedBytes.Load()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		f, err := p.Inspect(b.Context(), obs, nil)
		if err != nil {
			b.Fatal(err)
		}
		if f != nil {
			b.Fatalf("drift: %+v", f)
		}
	}
	b.ReportMetric(float64(p.hashedBytes.Load()-start)/float64(b.N), "hashed-B/op")
}

// BenchmarkInspectSteady: inspecting an unchanged instance whose files
// are in the drift cache.
func BenchmarkInspectSteady(b *testing.B) {
	p, obs := benchInstance(b, false)
	waitCached(b, p, obs)
	runInspectBench(b, p, obs)
}

// BenchmarkInspectFullHash: the baseline, every file hashed at every
// inspection.
func BenchmarkInspectFullHash(b *testing.B) {
	p, obs := benchInstance(b, true)
	runInspectBench(b, p, obs)
}

// makeBenchBundle is makeBundle for benchmarks.
func makeBenchBundle(b *testing.B) string {
	b.Helper()
	dir := b.TempDir()
	bin, err := os.ReadFile(sampleBin)
	if err != nil {
		b.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"manifest.json":   []byte(`{"name": "sampleapp", "version": "bench", "entrypoint": ["bin/sampleapp"]}`),
		"config/app.conf": []byte("greeting = \"hello from bench\"\n"),
		"bin/sampleapp":   bin,
	} {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}
