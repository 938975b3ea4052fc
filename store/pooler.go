package store

import (
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Pooler says what sits between the function and PostgreSQL (DB_POOLER).
//
// Behind a transaction-mode pooler (PgBouncer with pool_mode = transaction,
// or Cloud SQL Managed Connection Pooling in transaction mode) each
// transaction, and each statement outside one, may run on a different server
// connection. Anything that outlives a transaction on the server breaks:
// named prepared statements (pgx's default statement cache, which fails
// with "prepared statement stmtcache_... already exists", SQLSTATE 42P05,
// once two clients share a server connection), session SETs, session
// advisory locks and temporary tables.
//
// What the store does on connect and per statement, so that it is safe in
// both modes:
//   - no AfterConnect hook, no SET, no session variables: the deadline of a
//     statement is a context deadline (DB_QUERY_TIMEOUT), enforced by pgx
//     with a cancel request, which PgBouncer forwards to the right server;
//   - with PoolerTransaction, statements use poolerExecMode instead of
//     named prepared statements;
//   - each migration runs in a transaction under a transaction-scoped
//     advisory lock in every mode (see [migrations.Apply]), so they need no
//     session either.
type Pooler string

const (
	// PoolerNone is a direct connection to PostgreSQL (the default).
	PoolerNone Pooler = ""
	// PoolerTransaction is a transaction-mode pooler.
	PoolerTransaction Pooler = "transaction"
)

// poolerExecMode is how statements are sent through a transaction-mode
// pooler. pgx's modes, measured through PgBouncer 1.18 by
// BenchmarkPoolerExecModes (cmd/pscbench/BENCHMARKS.md, "pgx exec modes through
// PgBouncer"):
//   - cache statement (pgx's default, used direct) prepares named
//     statements per server session: unsafe, it fails with 42P05;
//   - describe exec describes with the unnamed statement, then binds to it
//     in a second round trip, which a pooler may send to another server:
//     unsafe;
//   - cache describe, exec and simple protocol each send a statement in one
//     round trip that parses, binds and executes it together: safe.
//
// Of the safe ones, cache describe was the fastest; it caches only the
// parameter and result types of each statement on the client, never
// anything on a server.
const poolerExecMode = pgx.QueryExecModeCacheDescribe

// poolerFromEnv reads DB_POOLER.
func poolerFromEnv(getenv func(string) string) (Pooler, error) {
	switch v := strings.ToLower(strings.TrimSpace(getenv("DB_POOLER"))); v {
	case "", "none":
		return PoolerNone, nil
	case "transaction":
		return PoolerTransaction, nil
	default:
		return "", &ConfigError{Var: "DB_POOLER", Msg: `must be "none" (a direct connection, the default) or "transaction" (a transaction-mode pooler such as PgBouncer)`}
	}
}

// applyPooler makes pc safe behind c.Pooler. A connection string that asks
// for pgx's statement cache behind a transaction-mode pooler is refused: it
// is exactly what fails there. Another explicit default_query_exec_mode is
// kept, as the operator's choice, when it is safe.
func (c *Config) applyPooler(pc *pgxpool.Config, connString string) error {
	if c.Pooler != PoolerTransaction {
		return nil
	}
	cc := pc.ConnConfig
	explicit := strings.Contains(connString, "default_query_exec_mode")
	switch {
	case !explicit:
		cc.DefaultQueryExecMode = poolerExecMode
	case cc.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement || cc.DefaultQueryExecMode == pgx.QueryExecModeDescribeExec:
		return &ConfigError{Var: "DATABASE_URL", Msg: "default_query_exec_mode=" + strings.ReplaceAll(cc.DefaultQueryExecMode.String(), " ", "_") +
			" is not safe with DB_POOLER=transaction; remove it (the store then uses cache_describe) or use exec or simple_protocol"}
	}
	return nil
}
