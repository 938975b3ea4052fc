// Package logging writes the function's log lines: JSON in Cloud Logging's
// structured format (severity, message, trace correlation fields), or short
// text lines for a terminal; repeats of one failure collapsed into a line per
// window; and text a sender controls escaped so that it cannot forge, hide
// or reorder lines, or drive the terminal they are read on.
//
// The function's package (the module's root) builds its logger here from its
// configuration (LOG_LEVEL, LOG_FORMAT, read once there), and the commands
// escape what they print with EscapeControl. It lives below cmd/ only
// because the repository's top level is fixed; it is not internal so that
// the root package can import it.
package logging
