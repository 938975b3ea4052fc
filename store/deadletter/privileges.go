package deadletter

import "example.com/pscmessages/store"

// OperatorPrivileges is exactly what the dead-letter operator uses (list,
// show, replay, delete): [store.ReplayPrivileges] for replaying through a
// [store.Config.ReplayOnly] store, and reading and deleting dead letters. It
// is not a superset of [store.FunctionPrivileges]: the operator cannot
// update or delete messages. [store.GrantSQL] turns it into GRANTs.
func OperatorPrivileges() []store.Privilege {
	return append(store.ReplayPrivileges(),
		store.Privilege{Kind: "TABLE", Object: "dead_letters", Action: "SELECT"},
		store.Privilege{Kind: "TABLE", Object: "dead_letters", Action: "DELETE"})
}
