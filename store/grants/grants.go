package grants

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"example.com/pscmessages/store/migrations"
)

// Privilege is one privilege the function's role needs. It is stated in the
// terms of PostgreSQL's has_*_privilege functions, so that one list both
// grants and verifies.
type Privilege struct {
	Kind   string // "SCHEMA", "TABLE" or "SEQUENCE"
	Object string // unquoted name, resolved through the search_path like the function's queries
	Action string // "USAGE", "SELECT", "INSERT", "UPDATE" or "DELETE"
	Column string // for a column privilege; "" means the whole object
}

func (p Privilege) String() string {
	s := p.Action
	if p.Column != "" {
		s += " (" + p.Column + ")"
	}
	return s + " on " + strings.ToLower(p.Kind) + " " + p.Object
}

// SQL returns the privilege and the object as GRANT and REVOKE spell them,
// for example `SELECT ("event_id")` and `TABLE "dead_letters"`.
func (p Privilege) SQL() (privilege, object string) {
	privilege = p.Action
	if p.Column != "" {
		privilege += " (" + pgx.Identifier{p.Column}.Sanitize() + ")"
	}
	return privilege, p.Kind + " " + pgx.Identifier{p.Object}.Sanitize()
}

// Functions lists exactly what both functions' statements (package store's)
// use, and nothing that lets them change the schema: once an administrator has
// migrated, the function never creates, alters or drops anything. It does
// not let them edit or delete messages: only Messages with HTTP_ROUTES=all
// does that, with [Edits] as well.
//
//   - messages: List and Get read, Add inserts and reads back its RETURNING
//     and the rows its keys already stored.
//   - messages_id_seq: Add draws ids with nextval() itself.
//   - idempotency_keys: Add reads what keys were first used for and records
//     new ones; the writer's cleanup deletes expired records.
//   - dead_letters: AddDeadLetter inserts with ON CONFLICT (dedupe_key), and
//     PostgreSQL requires SELECT on a conflict target's columns, so that
//     column (a digest) is readable and no others. (Schemas granted before
//     migration 004 also let the role read event_source and event_id; the
//     function no longer needs that, and an operator may revoke it.)
//   - dead_letters_id_seq: the bigserial default calls nextval().
//   - the version table ([migrations.VersionTable]): Open with migrations
//     off reads the schema version.
//   - schema public: where the migrations create the tables. PostgreSQL gives
//     USAGE on it to PUBLIC by default, but a hardened database may not.
func Functions() []Privilege {
	return []Privilege{
		{Kind: "SCHEMA", Object: "public", Action: "USAGE"},
		{Kind: "TABLE", Object: "messages", Action: "SELECT"},
		{Kind: "TABLE", Object: "messages", Action: "INSERT"},
		{Kind: "SEQUENCE", Object: "messages_id_seq", Action: "USAGE"},
		{Kind: "TABLE", Object: "idempotency_keys", Action: "SELECT"},
		{Kind: "TABLE", Object: "idempotency_keys", Action: "INSERT"},
		{Kind: "TABLE", Object: "idempotency_keys", Action: "DELETE"},
		{Kind: "TABLE", Object: "dead_letters", Action: "INSERT"},
		{Kind: "TABLE", Object: "dead_letters", Action: "SELECT", Column: "dedupe_key"},
		{Kind: "SEQUENCE", Object: "dead_letters_id_seq", Action: "USAGE"},
		{Kind: "TABLE", Object: migrations.VersionTable, Action: "SELECT"},
	}
}

// Edits is what Messages needs beyond [Functions] with
// HTTP_ROUTES=all (store.Config.Edits): Update and Delete change and remove
// any message. IngestPubSub, and Messages serving only create and read
// (the default), never need them.
func Edits() []Privilege {
	return []Privilege{
		{Kind: "TABLE", Object: "messages", Action: "UPDATE"},
		{Kind: "TABLE", Object: "messages", Action: "DELETE"},
	}
}

// Replay is what a store.Config.ReplayOnly store uses: Add's group
// commit reads and inserts idempotency records and inserts messages (its
// lookup of known keys reads messages too), draws ids from messages_id_seq,
// and Open reads the schema version. No UPDATE or DELETE on messages or
// idempotency_keys: a ReplayOnly store never cleans up expired keys.
func Replay() []Privilege {
	return []Privilege{
		{Kind: "SCHEMA", Object: "public", Action: "USAGE"},
		{Kind: "TABLE", Object: "messages", Action: "SELECT"},
		{Kind: "TABLE", Object: "messages", Action: "INSERT"},
		{Kind: "SEQUENCE", Object: "messages_id_seq", Action: "USAGE"},
		{Kind: "TABLE", Object: "idempotency_keys", Action: "SELECT"},
		{Kind: "TABLE", Object: "idempotency_keys", Action: "INSERT"},
		{Kind: "TABLE", Object: migrations.VersionTable, Action: "SELECT"},
	}
}

// SQL returns the statements that give role exactly privs (such as
// [Functions]), one statement per object. Every identifier is quoted, so
// Cloud SQL IAM user names such as "fn@project.iam" need no care from
// callers, and granting twice changes nothing.
func SQL(role string, privs []Privilege) []string {
	grantee := pgx.Identifier{role}.Sanitize()
	var out []string
	var object string    // the object being collected
	var actions []string // its privileges, in order
	var cols [][]string  // columns of each entry of actions that has any
	flush := func() {
		if len(actions) == 0 {
			return
		}
		list := make([]string, len(actions))
		for i, a := range actions {
			list[i] = a
			if len(cols[i]) > 0 {
				list[i] += " (" + strings.Join(cols[i], ", ") + ")"
			}
		}
		out = append(out, fmt.Sprintf("GRANT %s ON %s TO %s", strings.Join(list, ", "), object, grantee))
		actions, cols = nil, nil
	}
	for _, p := range privs {
		_, on := p.SQL()
		if on != object {
			flush()
			object = on
		}
		merged := false
		if p.Column != "" {
			// SELECT (a), SELECT (b) reads better as SELECT (a, b).
			for i := range actions {
				if actions[i] == p.Action && len(cols[i]) > 0 {
					cols[i] = append(cols[i], pgx.Identifier{p.Column}.Sanitize())
					merged = true
					break
				}
			}
		}
		if !merged {
			actions = append(actions, p.Action)
			var c []string
			if p.Column != "" {
				c = []string{pgx.Identifier{p.Column}.Sanitize()}
			}
			cols = append(cols, c)
		}
	}
	flush()
	return out
}

// Missing returns those of privs (such as [Functions]) that role lacks, as
// PostgreSQL itself answers, so that a migration proves its grants took
// effect and an operator sees exactly what is missing rather than a
// permission error on some later request. A missing object counts as a
// missing privilege.
func Missing(ctx context.Context, conn *pgx.Conn, role string, privs []Privilege) ([]Privilege, error) {
	var missing []Privilege
	for _, p := range privs {
		// Names are parsed as SQL identifiers, except schema names, which are
		// taken literally. Existence is checked first, because
		// has_*_privilege raises an error for an object a missing migration
		// never created.
		var query string
		args := []any{role, pgx.Identifier{p.Object}.Sanitize(), p.Action}
		switch {
		case p.Kind == "SCHEMA":
			args[1] = p.Object
			query = "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $2::text) AND has_schema_privilege($1::name, $2::text, $3::text)"
		case p.Kind == "TABLE" && p.Column != "":
			args = append(args, p.Column)
			query = "SELECT CASE WHEN to_regclass($2::text) IS NOT NULL AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass($2::text) AND attname = $4::text AND NOT attisdropped) THEN has_column_privilege($1::name, $2::text, $4::text, $3::text) ELSE false END"
		case p.Kind == "TABLE":
			query = "SELECT CASE WHEN to_regclass($2::text) IS NOT NULL THEN has_table_privilege($1::name, $2::text, $3::text) ELSE false END"
		case p.Kind == "SEQUENCE":
			query = "SELECT CASE WHEN to_regclass($2::text) IS NOT NULL THEN has_sequence_privilege($1::name, $2::text, $3::text) ELSE false END"
		default:
			return nil, fmt.Errorf("unknown privilege kind %q", p.Kind)
		}
		var ok bool
		if err := conn.QueryRow(ctx, query, args...).Scan(&ok); err != nil {
			return nil, fmt.Errorf("checking %s for role %q: %w", p, role, err)
		}
		if !ok {
			missing = append(missing, p)
		}
	}
	return missing, nil
}
