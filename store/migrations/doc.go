// Package migrations is the schema of the messages database: the
// migrations beside this file (NNN_*.sql, embedded in the build), and how
// they are applied, each in its own transaction under a transaction-scoped
// advisory lock, so that instances cold-starting together and an operator's
// `go run ./cmd/pscmessages migrate` apply each migration once, directly or
// through a transaction-mode pooler (see [Apply] and store/MIGRATIONS.md).
//
// Package store applies them when it opens with DB_MIGRATE=true
// ([ApplyInline]); operators apply them with [Apply] and ask what a
// database lacks with [Pending].
package migrations
