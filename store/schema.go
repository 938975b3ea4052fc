package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/grants"
	"example.com/pscmessages/store/migrations"
)

// ErrMigrationOffline marks a pending migration that scans tables too large
// for a cold start to migrate ([migrations.ErrOffline], see
// [migrations.InlineBytes]). Open returns it as [ErrPermanent]: an
// administrator runs `migrate`, and the next attempt to open the store (the
// function retries every 10 s) finds it done.
var ErrMigrationOffline = migrations.ErrOffline

// prepareSchema migrates, or with migrations off checks that an administrator
// did and that this role may use the tables, so a missing grant is reported
// once, clearly, instead of as a failure on every request.
func (s *Store) prepareSchema(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return classify(fmt.Errorf("connecting: %w", err))
	}
	defer conn.Release()
	if s.cfg.Migrate {
		if err := migrations.ApplyInline(ctx, conn.Conn()); err != nil {
			if errors.Is(err, ErrMigrationOffline) {
				return &permanentError{Msg: err.Error(), Err: err}
			}
			if isTransient(err) {
				return classify(err)
			}
			return fmt.Errorf("%w: %w", ErrSchema, err)
		}
	}
	privs := grants.Functions()
	if s.cfg.ReplayOnly {
		privs = grants.Replay()
	}
	if err := checkSchema(ctx, conn.Conn(), privs); err != nil {
		return err
	}
	if !s.cfg.Edits || s.cfg.ReplayOnly {
		return nil
	}
	return checkEdits(ctx, conn.Conn())
}

// checkEdits verifies [grants.Edits] where Messages serves edits. Their
// lack is the deployment's configuration, not a schema on its way: a
// permanentError, said once and answered "misconfigured", naming the grant.
func checkEdits(ctx context.Context, conn *pgx.Conn) error {
	role := conn.Config().User
	missing, err := grants.Missing(ctx, conn, role, grants.Edits())
	switch {
	case err != nil && isTransient(err):
		return classify(err)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrSchema, err)
	case len(missing) > 0:
		names := make([]string, len(missing))
		for i, p := range missing {
			names[i] = p.String()
		}
		return &permanentError{Msg: fmt.Sprintf("HTTP_ROUTES=all serves PUT, PATCH and DELETE, but role %q lacks %s: grant them (go run ./cmd/pscmessages migrate -grant-edits ROLE), or unset HTTP_ROUTES",
			role, strings.Join(names, ", "))}
	}
	return nil
}

// checkSchema verifies the privileges the store uses, then the schema version.
func checkSchema(ctx context.Context, conn *pgx.Conn, privs []grants.Privilege) error {
	role := conn.Config().User
	missing, err := grants.Missing(ctx, conn, role, privs)
	switch {
	case err != nil && isTransient(err):
		return classify(err)
	case err != nil:
		return fmt.Errorf("%w: %w", ErrSchema, err)
	case len(missing) > 0:
		names := make([]string, len(missing))
		for i, p := range missing {
			names[i] = p.String()
		}
		return fmt.Errorf("%w: role %q lacks %s; run the migrations and grants (go run ./cmd/pscmessages migrate -grant ROLE)",
			ErrSchema, role, strings.Join(names, ", "))
	}
	var version int32
	err = conn.QueryRow(ctx, "SELECT version FROM "+migrations.VersionTable).Scan(&version)
	switch {
	case err != nil && isTransient(err):
		return classify(fmt.Errorf("reading schema version: %w", err))
	case err != nil:
		return fmt.Errorf("%w: reading schema version: %w", ErrSchema, err)
	case version < migrations.Latest():
		return fmt.Errorf("%w: schema version %d, this build needs %d; run the migrations", ErrSchema, version, migrations.Latest())
	}
	return nil
}
