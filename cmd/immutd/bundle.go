package main

import (
	"context"

	"github.com/immutd/immutd/internal/provider/local"
)

// checkBundle checks a local fleet's image bundle directory as deeply as
// the agent does when it imports it (same checks, same error texts,
// nothing copied). It is a variable so that tests can replace it;
// validate skips the check while it is nil.
var checkBundle func(ctx context.Context, dir string) error = local.CheckBundle
