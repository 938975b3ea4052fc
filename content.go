package function

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"
)

// readContent reads a JSON {"content": "..."} body within the size limits
// and the process's body budget (see readBody). The caller must call release
// once done with content (once it is stored), also after an error.
func (s *service) readContent(w http.ResponseWriter, r *http.Request, cfg settings) (content string, release func(), err error) {
	release = func() {}
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return "", release, &apiError{status: http.StatusUnsupportedMediaType, msg: "Content-Type must be application/json"}
	}
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return "", release, &apiError{status: http.StatusUnsupportedMediaType, msg: "charset must be utf-8"}
	}
	tooLarge := &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("request body exceeds %d bytes", cfg.maxBodyBytes)}
	if r.ContentLength > cfg.maxBodyBytes {
		closeConnection(w) // none of it is read
		return "", release, tooLarge
	}
	b, eof, err := s.readBody(w, r, cfg.maxBodyBytes+1)
	if err != nil {
		return "", release, err
	}
	if !eof || int64(len(b.buf)) > cfg.maxBodyBytes {
		b.release() // readBody has the connection closed: the rest is not read
		return "", release, tooLarge
	}
	content, err = decodeContent(b.buf, cfg.maxContentBytes)
	return content, b.release, err
}

// decodeContent extracts and validates "content" from a JSON object body.
func decodeContent(body []byte, maxContent int) (string, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return "", badRequest("request body is empty; send {\"content\": \"...\"}")
	}
	if !utf8.Valid(body) {
		return "", badRequest("request body is not valid UTF-8")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return "", badRequest("request body must be a JSON object")
		}
		return "", badRequest("request body is not valid JSON")
	}
	if obj == nil {
		return "", badRequest("request body must be a JSON object")
	}
	raw, ok := obj["content"]
	if !ok {
		return "", badRequest("field \"content\" is required")
	}
	var content string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &content) != nil {
		return "", badRequest("field \"content\" must be a string")
	}
	if err := checkEscapes(raw); err != nil {
		return "", err
	}
	if err := checkContent(content, maxContent); err != nil {
		return "", err
	}
	return content, nil
}

// checkEscapes refuses a JSON string whose \u escapes name a lone UTF-16
// surrogate (\ud800 without a low surrogate after it, or \udc00 alone):
// encoding/json decodes one as U+FFFD, so the content stored would not be
// the content sent. Text cannot hold a lone surrogate, so there is nothing
// exact to store.
func checkEscapes(str json.RawMessage) error {
	hex4 := func(i int) rune {
		if i+6 > len(str) || str[i] != '\\' || str[i+1] != 'u' {
			return -1
		}
		var r rune
		for _, c := range str[i+2 : i+6] {
			switch {
			case '0' <= c && c <= '9':
				r = r<<4 | rune(c-'0')
			case 'a' <= c && c <= 'f':
				r = r<<4 | rune(c-'a'+10)
			case 'A' <= c && c <= 'F':
				r = r<<4 | rune(c-'A'+10)
			default:
				return -1
			}
		}
		return r
	}
	for i := 0; i < len(str); i++ {
		if str[i] != '\\' {
			continue
		}
		r := hex4(i)
		switch {
		case r < 0:
			i++ // a two-byte escape such as \\ or \"
		case 0xd800 <= r && r < 0xdc00:
			if low := hex4(i + 6); low < 0xdc00 || low > 0xdfff {
				return badRequest("content holds a lone UTF-16 surrogate escape (\\u%04x), which is not a character", r)
			}
			i += 11
		case 0xdc00 <= r && r <= 0xdfff:
			return badRequest("content holds a lone UTF-16 surrogate escape (\\u%04x), which is not a character", r)
		default:
			i += 5
		}
	}
	return nil
}

// checkContent applies the rules every stored message obeys, from either entry point.
func checkContent(content string, maxContent int) error {
	switch {
	case strings.TrimSpace(content) == "":
		return badRequest("content must not be empty")
	case len(content) > maxContent:
		return &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("content exceeds %d bytes", maxContent)}
	case strings.IndexByte(content, 0) >= 0:
		return badRequest("content must not contain NUL characters")
	case !utf8.ValidString(content):
		return badRequest("content is not valid UTF-8")
	}
	return nil
}

// writeError answers err as JSON {"error": "..."} with a fitting status. Only
