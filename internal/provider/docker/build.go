package docker

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/docker/api/types/build"
)

// BuildImage builds an image on p's engine from contextDir, which holds
// a Dockerfile and everything it copies, tags it with tags and returns
// its ID ("sha256:..."). The whole directory is sent as the build
// context (there is no .dockerignore handling). It uses the classic
// builder, which builds FROM scratch images without a registry.
//
// immutd itself never builds images; this is for tests and tooling that
// need a golden image on an engine that cannot pull.
func BuildImage(ctx context.Context, p *Provider, contextDir string, tags []string) (string, error) {
	return p.buildImage(ctx, contextDir, tags, nil, false)
}

// buildImage is BuildImage with image labels and, with noCache, no reuse
// of earlier build steps (so the image is new, not shared with another
// build of the same content).
func (p *Provider) buildImage(ctx context.Context, contextDir string, tags []string, labels map[string]string, noCache bool) (string, error) {
	id, err := p.build(ctx, contextDir, tags, labels, noCache)
	if err != nil {
		return "", fmt.Errorf("docker: build %s: %w", contextDir, err)
	}
	return id, nil
}

func (p *Provider) build(ctx context.Context, contextDir string, tags []string, labels map[string]string, noCache bool) (string, error) {
	if fi, err := os.Stat(filepath.Join(contextDir, "Dockerfile")); err != nil || !fi.Mode().IsRegular() {
		return "", fmt.Errorf("no Dockerfile in the context directory")
	}
	pr, pw := io.Pipe()
	tarred := make(chan error, 1)
	go func() {
		err := writeTar(pw, contextDir)
		pw.CloseWithError(err)
		tarred <- err
	}()
	resp, err := p.cli.ImageBuild(ctx, pr, build.ImageBuildOptions{
		Tags:        tags,
		Labels:      labels,
		NoCache:     noCache,
		Remove:      true,
		ForceRemove: true,
		Version:     build.BuilderV1,
	})
	if err != nil {
		pr.CloseWithError(err)
		<-tarred
		return "", err
	}
	defer resp.Body.Close()
	id, buildErr := readBuildOutput(resp.Body)
	// The engine has read the whole context by the time a build
	// succeeds; a failed build may have stopped reading it early.
	pr.CloseWithError(errBuildDone)
	if err := <-tarred; err != nil && !errors.Is(err, errBuildDone) && buildErr == nil {
		return "", fmt.Errorf("send context: %w", err)
	}
	if buildErr != nil {
		return "", buildErr
	}
	if len(tags) > 0 {
		// The tag is what callers use; make sure it names the new image.
		img, err := p.cli.ImageInspect(ctx, tags[0])
		if err != nil {
			return "", fmt.Errorf("inspect %s after the build: %w", tags[0], err)
		}
		if id != "" && img.ID != id {
			return "", fmt.Errorf("tag %s names %s, not the built image %s", tags[0], img.ID, id)
		}
		id = img.ID
	}
	if id == "" {
		return "", errors.New("the engine did not report the image id")
	}
	return id, nil
}

// errBuildDone stops sending the context once the engine answered.
var errBuildDone = errors.New("build finished")

// buildMessage is one line of the engine's build output.
type buildMessage struct {
	Stream      string                    `json:"stream"`
	Error       string                    `json:"error"`
	ErrorDetail *struct{ Message string } `json:"errorDetail"`
	Aux         json.RawMessage           `json:"aux"`
}

// readBuildOutput reads the build's JSON message stream to its end and
// returns the image id the engine reported, or the build error together
// with the last lines of output.
func readBuildOutput(r io.Reader) (string, error) {
	dec := json.NewDecoder(r)
	var id string
	var tail []string
	for {
		var m buildMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return id, nil
			}
			return "", fmt.Errorf("read build output: %w", err)
		}
		if msg := m.Error; msg != "" || m.ErrorDetail != nil {
			if msg == "" {
				msg = m.ErrorDetail.Message
			}
			if len(tail) > 0 {
				msg += "\n" + strings.Join(tail, "\n")
			}
			return "", errors.New(msg)
		}
		if len(m.Aux) > 0 {
			var aux struct{ ID string }
			if json.Unmarshal(m.Aux, &aux) == nil && aux.ID != "" {
				id = aux.ID
			}
		}
		if line := strings.TrimSpace(m.Stream); line != "" {
			tail = append(tail, line)
			if len(tail) > 10 {
				tail = tail[1:]
			}
		}
	}
}

// writeTar writes dir as a tar stream: directories, regular files and
// symlinks, owned by root, paths relative to dir.
func writeTar(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		case fi.IsDir(), fi.Mode().IsRegular():
		default:
			return nil // sockets, devices and pipes have no place in a context
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.Copy(tw, f); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
