package logging

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// EscapeControl returns s with everything a terminal or a reader of a log
// could take for something other than text written as Go escapes it: C0
// controls (ESC, VT, FF, newlines, ...) and DEL as \x1b, \v, \f, \n; C1
// controls (NEL, CSI, ...), the line and paragraph separators U+2028 and
// U+2029, bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E,
// U+200F, U+061C) and every other rune Go does not count as printable as
// \u0085, \u2028, \u202e; bytes that are not UTF-8 as \xff; and the
// backslash as \\, so an escape in s cannot pass for one made here. A sender
// then cannot forge or hide lines, reorder what an operator reads, or drive
// the terminal. Text without any of these is returned as it is.
func EscapeControl(s string) string {
	if !needsEscape(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b.WriteString(`\x`)
			b.WriteString(strconv.FormatUint(uint64(s[i])>>4, 16))
			b.WriteString(strconv.FormatUint(uint64(s[i])&15, 16))
		case r == '\\':
			b.WriteString(`\\`)
		case printable(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// printable is a rune shown as itself: the space and Go's printable runes,
// which leave out every control (Cc), format character (Cf, the bidi
// controls among them) and separator other than the space (U+2028, U+2029).
func printable(r rune) bool { return r == ' ' || unicode.IsPrint(r) }

func needsEscape(s string) bool {
	for _, r := range s { // an invalid byte reads as RuneError, not printable
		if r == '\\' || r == utf8.RuneError || !printable(r) {
			return true
		}
	}
	return false
}
