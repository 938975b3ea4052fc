// Package grants states, as PostgreSQL privileges, exactly what each role
// of the deployment needs: the functions' ([Functions]), Messages' edits
// ([Edits]) and a replaying operator's ([Replay]); turns such a list into
// GRANT statements ([SQL]); and asks PostgreSQL which of them a role lacks
// ([Missing]). One list both grants and verifies, so `go run
// ./cmd/pscmessages migrate -grant` and package store's check at Open cannot
// drift apart.
package grants
