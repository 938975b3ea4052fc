package grants_test

import (
	"slices"
	"strings"
	"testing"

	"example.com/pscmessages/store/grants"
	"example.com/pscmessages/store/migrations"
)

// TestSQLQuotesEveryIdentifier: a role named as Cloud SQL IAM users are, or
// as an attacker would, is granted as one quoted identifier, and the
// functions' privileges come out one statement per object.
func TestSQLQuotesEveryIdentifier(t *testing.T) {
	tests := []struct {
		role    string
		grantee string
	}{
		{"fn_user", `"fn_user"`},
		{"messages-fn@my-project.iam", `"messages-fn@my-project.iam"`},
		{"Upper", `"Upper"`},
		{`we"ird; DROP TABLE messages`, `"we""ird; DROP TABLE messages"`},
	}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			got := grants.SQL(tt.role, grants.Functions())
			want := []string{
				`GRANT USAGE ON SCHEMA "public" TO ` + tt.grantee,
				`GRANT SELECT, INSERT ON TABLE "messages" TO ` + tt.grantee,
				`GRANT USAGE ON SEQUENCE "messages_id_seq" TO ` + tt.grantee,
				`GRANT SELECT, INSERT, DELETE ON TABLE "idempotency_keys" TO ` + tt.grantee,
				`GRANT INSERT, SELECT ("dedupe_key") ON TABLE "dead_letters" TO ` + tt.grantee,
				`GRANT USAGE ON SEQUENCE "dead_letters_id_seq" TO ` + tt.grantee,
				`GRANT SELECT ON TABLE "` + migrations.VersionTable + `" TO ` + tt.grantee,
			}
			if !slices.Equal(got, want) {
				t.Errorf("SQL(%q) =\n%s\nwant\n%s", tt.role, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}
