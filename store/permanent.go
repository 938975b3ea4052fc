package store

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrPermanent marks a failure that retrying will not heal: the database
// refuses the role, the database name, the password or the credentials the
// configuration gives, or its certificate does not verify. Callers answer
// 500, not 503, and log it; opening is still retried slowly, so a fix made
// outside the process (a role created, a flag set) is picked up without a
// restart.
var ErrPermanent = errors.New("the database refuses this configuration")

// permanentError is an [ErrPermanent] failure. Its message says what is wrong
// and which setting to look at, without secrets; Err is the cause, for
// errors.As (a *pgconn.PgError, for example).
type permanentError struct {
	Msg string
	Err error
}

func (e *permanentError) Error() string   { return e.Msg }
func (e *permanentError) Unwrap() []error { return []error{ErrPermanent, e.Err} }

// noCredentialsHint is what to do when IAM mode finds no Google credentials.
const noCredentialsHint = "IAM database authentication is on (DB_HOST without DB_PASSWORD, or DB_IAM_AUTH=true) but no Google default credentials were found. " +
	"On Cloud Run the service account provides them; elsewhere run `gcloud auth application-default login`. " +
	"Or log in with a password instead: DB_USER and DB_PASSWORD with DB_HOST, or DB_IAM_AUTH=false with a DATABASE_URL that holds the password"

// permanent returns err as a *permanentError when it is a failure that will
// not heal, else nil. passwordFinal says whether a refused password (28P01)
// is final: with a password it is; with IAM the first refusal can be a token
// that raced a rotation, and only a second one in a row is final.
func permanent(err error, passwordFinal bool) error {
	if err == nil {
		return nil
	}
	var pe *permanentError
	if errors.As(err, &pe) {
		return pe
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// The server's message names the role or database, never a password.
		code := loginCode(pgErr)
		switch {
		case code == "3D000":
			return &permanentError{Msg: pgErr.Message + ": check DB_NAME (or the database in DATABASE_URL); on Cloud SQL create it with `gcloud sql databases create`", Err: pgErr}
		case code == "28000":
			return &permanentError{Msg: "login refused: " + pgErr.Message + ": check DB_USER (or the user in DATABASE_URL); with IAM it is the service account's email without .gserviceaccount.com, created with `gcloud sql users create --type=cloud_iam_service_account`", Err: pgErr}
		case code == "28P01" && passwordFinal:
			return &permanentError{Msg: "login refused: " + pgErr.Message + ": check DB_USER and DB_PASSWORD (or the user and password in DATABASE_URL): PostgreSQL gives this answer for a role that does not exist, too; with IAM, check that the instance has cloudsql.iam_authentication=on, that DB_USER is this service account's IAM database user and that the account has roles/cloudsql.instanceUser", Err: pgErr}
		}
		return nil
	}
	var certErr *tls.CertificateVerificationError
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	if errors.As(err, &certErr) || errors.As(err, &hostErr) || errors.As(err, &authErr) {
		return &permanentError{Msg: "the database server's certificate did not verify: check DB_SSLMODE and DB_ROOT_CERT (the instance's server CA; verify-full also needs the name or IP the certificate was issued for)", Err: err}
	}
	return nil
}

// classifyAs is classify with a caller's view of a refused password: see
// [permanent].
func classifyAs(err error, passwordFinal bool) error {
	if p := permanent(err, passwordFinal); p != nil {
		return p
	}
	return classify(err)
}

// isPasswordRefused reports a 28P01 (invalid_password) from the server,
// directly or relayed by PgBouncer.
func isPasswordRefused(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && loginCode(pgErr) == "28P01"
}

// loginCode is the SQLSTATE of a login refusal as the server meant it.
// PgBouncer (1.18) relays the server's login FATAL, and reports its own
// refusals, with 08P01 (protocol_violation), a connection-exception code
// that would read as transient: a database or role that does not exist or a
// refused password then answered 503 forever. For 08P01 the message tells
// which refusal it was; any other 08P01 (the pooler stopping, a real
// protocol error) keeps its code, and stays transient.
func loginCode(pgErr *pgconn.PgError) string {
	if pgErr.Code != "08P01" {
		return pgErr.Code
	}
	m := pgErr.Message
	switch {
	case strings.HasPrefix(m, "database \"") && strings.HasSuffix(m, "\" does not exist"),
		strings.HasPrefix(m, "no such database"):
		return "3D000"
	case strings.HasPrefix(m, "role \"") && strings.HasSuffix(m, "\" does not exist"),
		strings.HasPrefix(m, "no such user"):
		return "28000"
	case strings.HasPrefix(m, "password authentication failed"),
		// The pooler's own refusal of a user its auth_file lacks, in any
		// auth_type: "trust" authentication failed.
		strings.HasPrefix(m, "\"") && strings.HasSuffix(m, "\" authentication failed"):
		return "28P01"
	}
	return pgErr.Code
}
