package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"cloud.google.com/go/compute/metadata"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
)

// tokenError marks a failure to obtain an IAM token. It is transient: the
// metadata server or token endpoint may answer on the next login attempt.
var tokenError = errors.New("fetching IAM database login token")

// configureIAM makes every new physical connection log in with a current
// OAuth2 access token as its password. Tokens are cached by the token source
// until shortly before they expire, so a warm pool fetches none per request;
// connections already open stay logged in after their token expires.
func configureIAM(ctx context.Context, cfg *Config, pc *pgxpool.Config) error {
	ts := cfg.TokenSource
	if ts == nil {
		// A background context: the token source outlives this call and
		// refreshes tokens for the life of the pool.
		var err error
		ts, err = google.DefaultTokenSource(context.Background(), iamLoginScope)
		if err != nil {
			// Found or not without the network: nothing a retry changes.
			return &permanentError{Msg: noCredentialsHint + " (" + err.Error() + ")", Err: err}
		}
	}
	ts = oauth2.ReuseTokenSource(nil, ts)

	if cfg.ConnString == "" && cfg.User == "" {
		if err := cfg.checkIAMUser(ctx); err != nil {
			return err // permanent: a configuration error, not 503 for ever
		}
		user, err := iamUserFromMetadata(ctx)
		if err != nil {
			return err
		}
		pc.ConnConfig.User = user
	}

	pc.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		tok, err := ts.Token()
		if err != nil {
			// The error describes the endpoint's answer, never a token.
			return fmt.Errorf("%w: %w", tokenError, err)
		}
		cc.Password = trimTokenPadding(tok.AccessToken)
		return nil
	}
	return nil
}

// trimTokenPadding removes trailing "." characters. Some Google token
// endpoints have returned access tokens padded with dots to a fixed length;
// Cloud SQL compares the password with the token itself, so a padded token
// fails the login. OAuth2 access tokens do not end in "." otherwise.
func trimTokenPadding(token string) string { return strings.TrimRight(token, ".") }

// iamUserFromMetadata derives the Cloud SQL IAM user name from the default
// service account: Cloud SQL names it after the email without the
// ".gserviceaccount.com" suffix.
func iamUserFromMetadata(ctx context.Context) (string, error) {
	email, err := metadata.EmailWithContext(ctx, "default")
	if err != nil {
		return "", fmt.Errorf("%w: DB_USER is unset and the metadata server did not give the service account email: %w", ErrUnavailable, err)
	}
	return IAMUser(email), nil
}

// IAMUser turns a service account email into its Cloud SQL IAM database user.
func IAMUser(email string) string {
	return strings.TrimSuffix(strings.TrimSpace(email), ".gserviceaccount.com")
}
