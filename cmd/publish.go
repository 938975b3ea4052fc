package main

import (
	"context"
	"errors"
)

func runPublish(ctx context.Context, args []string) error {
	return errors.New("not implemented yet")
}
