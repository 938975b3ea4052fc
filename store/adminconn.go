package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// AdminConn opens one connection with cfg exactly as [Open] configures its
// pool — the same environment variables, TLS rules and IAM token logins — for
// administrative work such as migrating and granting: one connection, not a
// pool, so that each step's transaction and the check after it see the same
// server. Like the pool it is safe behind a transaction-mode pooler
// (DB_POOLER): no step keeps session state between transactions.
func AdminConn(ctx context.Context, cfg Config) (*pgx.Conn, error) {
	pc, err := cfg.loginConfig(ctx)
	if err != nil {
		return nil, err
	}
	cc := pc.ConnConfig.Copy()
	if pc.BeforeConnect != nil {
		if err := pc.BeforeConnect(ctx, cc); err != nil {
			return nil, classify(err)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, classifyAs(fmt.Errorf("connecting as %q: %w", cc.User, err), !cfg.IAMAuth)
	}
	return conn, nil
}
