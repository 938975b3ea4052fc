package localpg

import "syscall"

// poolerProcAttr runs the pooler as cred. Pdeathsig: a test binary killed
// by its -timeout takes its pooler with it instead of leaving it listening.
func poolerProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
}
