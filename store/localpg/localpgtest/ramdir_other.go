//go:build !linux

package localpgtest

// ramParent is "" where we know no RAM file system every user may write.
func ramParent() string { return "" }
