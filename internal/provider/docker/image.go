package docker

import (
	"context"
	"fmt"
	"strings"

	cerrdefs "github.com/containerd/errdefs"
)

// imageNotFoundError says which reference is missing on which engine. It
// is ErrImageNotFound for errors.Is.
type imageNotFoundError struct {
	ref, host string
}

func (e *imageNotFoundError) Error() string {
	return fmt.Sprintf("docker: image %q not found on the engine at %s", e.ref, e.host)
}

func (e *imageNotFoundError) Is(target error) bool { return target == ErrImageNotFound }

// Resolve pins an image reference ("repo:tag", "repo@sha256:..." or an
// image ID) to the ID of the image the engine has for it now
// ("sha256:<64 hex>"). Nothing is pulled: an image the engine does not
// have is an error that is ErrImageNotFound.
//
// The ID, not the reference, is what instances are launched from, so
// moving a tag later changes nothing until the desired state is
// committed (and resolved) again.
func (p *Provider) Resolve(ctx context.Context, ref string) (string, error) {
	if strings.TrimSpace(ref) == "" {
		return "", fmt.Errorf("docker: resolve: empty image reference")
	}
	img, err := p.cli.ImageInspect(ctx, ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return "", &imageNotFoundError{ref: ref, host: p.host}
		}
		return "", fmt.Errorf("docker: resolve %s: %w", ref, err)
	}
	if !strings.HasPrefix(img.ID, "sha256:") {
		return "", fmt.Errorf("docker: resolve %s: engine returned image id %q, want sha256:<hex>", ref, img.ID)
	}
	return img.ID, nil
}
