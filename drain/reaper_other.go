//go:build !linux

package drain

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
)

// BecomeSubreaper is only supported on Linux.
func BecomeSubreaper() error { return errors.New("a child subreaper needs Linux") }

// RunReaper does nothing outside Linux.
func RunReaper(ctx context.Context, _ *zap.Logger, _, _ time.Duration) { <-ctx.Done() }
