// Package store keeps messages in PostgreSQL through one pgx pool.
//
// It owns what the functions need of the database: configuration from the
// environment, IAM token logins, opening with the schema migrated or
// checked, group-committed inserts, pages, dead letters kept whole, and the
// classification of failures into errors callers can branch on
// (ErrUnavailable, ErrPermanent, ErrSchema, ...).
//
// Beside it, for operators on one administrative connection ([AdminConn]):
// package migrations applies the schema and says what a database lacks,
// package grants grants and verifies exactly what each role needs, and
// package deadletter lists, reads and deletes dead letters.
//
// Nothing it does needs a server session to outlive a transaction, so it
// also works behind a transaction-mode pooler such as PgBouncer (DB_POOLER,
// see [Pooler]): no SET or other state on connect, statement deadlines from
// contexts, and migrations under pg_advisory_xact_lock rather than tern's
// session lock (see [migrations.Apply] for why that rather than refusing to
// migrate through a pooler).
package store
