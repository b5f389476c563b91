package instance

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ErrPermanent marks an error the same call would meet again, however
// often it is retried: an id a provider cannot use, an image it does not
// have. The executor does not retry such a call.
var ErrPermanent = errors.New("permanent error")

// Permanent marks err as permanent (errors.Is(err, ErrPermanent)); the
// message stays err's own.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanent{err}
}

type permanent struct{ err error }

func (p permanent) Error() string        { return p.err.Error() }
func (p permanent) Unwrap() error        { return p.err }
func (p permanent) Is(target error) bool { return target == ErrPermanent }

// validID is what every provider accepts as an instance id: it names a
// directory, a container, a lock file.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckID refuses an id no provider can use (a permanent error).
func CheckID(id string) error {
	if !validID.MatchString(id) {
		return Permanent(fmt.Errorf("instance id %q must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", id))
	}
	return nil
}

// Check refuses a launch request no provider can carry out: a bad id, or
// an environment a process cannot be given (permanent errors).
func (r LaunchRequest) Check() error {
	if err := CheckID(r.InstanceID); err != nil {
		return err
	}
	for k, v := range r.Launch.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return Permanent(fmt.Errorf("launch env %q: names must be non-empty without '=' or NUL, values without NUL", k))
		}
	}
	return nil
}
