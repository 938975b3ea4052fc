//go:build !linux

package localpg

import "syscall"

// poolerProcAttr runs the pooler as cred. Without Linux's Pdeathsig, a
// test binary killed by its -timeout leaves its pooler to Stop or to the
// next run's cleanup.
func poolerProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}
