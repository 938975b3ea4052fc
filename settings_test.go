package function

import (
	"errors"
	"strings"
	"testing"

	"example.com/pscmessages/store"
)

func TestSettingsLimits(t *testing.T) {
	cases := []struct {
		env      map[string]string
		wantVar  string
		wantBody int64
	}{
		{env: map[string]string{}, wantBody: DefaultMaxBodyBytes},
		{env: map[string]string{"MAX_CONTENT_BYTES": "1000000"}, wantBody: 6001024},
		{env: map[string]string{"MAX_CONTENT_BYTES": "100", "MAX_BODY_BYTES": "50"}, wantVar: "MAX_BODY_BYTES"},
		// Content within the limit, escaped six bytes a byte, would not fit.
		{env: map[string]string{"MAX_CONTENT_BYTES": "100", "MAX_BODY_BYTES": "1623"}, wantVar: "MAX_BODY_BYTES"},
		{env: map[string]string{"MAX_CONTENT_BYTES": "100", "MAX_BODY_BYTES": "1624"}, wantBody: 1624},
		{env: map[string]string{"MAX_CONTENT_BYTES": "0"}, wantVar: "MAX_CONTENT_BYTES"},
	}
	for _, tc := range cases {
		tc.env["DATABASE_URL"] = "postgres://u@h/d"
		s, err := loadSettings(func(k string) string { return tc.env[k] })
		var ce *store.ConfigError
		switch {
		case tc.wantVar != "" && (!errors.As(err, &ce) || ce.Var != tc.wantVar):
			t.Errorf("%v: err = %v, want one naming %s", tc.env, err, tc.wantVar)
		case tc.wantVar == "" && (err != nil || s.maxBodyBytes != tc.wantBody):
			t.Errorf("%v: body limit %d, err %v; want %d", tc.env, s.maxBodyBytes, err, tc.wantBody)
		}
	}
}

// TestLogSettingsAreConfiguration: an invalid LOG_LEVEL or LOG_FORMAT is a
// configuration error naming the variable, so a runner refuses it at start.
func TestLogSettingsAreConfiguration(t *testing.T) {
	for _, tc := range []struct{ name, value, want string }{
		{"LOG_LEVEL", "loud", "LOG_LEVEL: must be debug, info (the default), warn or error"},
		{"LOG_FORMAT", "xml", "LOG_FORMAT: must be json (Cloud Logging) or text"},
	} {
		_, err := loadSettings(envOf(map[string]string{"DATABASE_URL": "postgres://u@127.0.0.1:1/d", tc.name: tc.value}))
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s=%s: %v, want %q", tc.name, tc.value, err, tc.want)
		}
	}
}
