package deadletter

import "example.com/pscmessages/store/grants"

// OperatorPrivileges is exactly what the dead-letter operator uses (list,
// show, replay, delete): [grants.Replay] for replaying through a
// [store.Config.ReplayOnly] store, and reading and deleting dead letters. It
// is not a superset of [grants.Functions]: the operator cannot update or
// delete messages. [grants.SQL] turns it into GRANTs.
func OperatorPrivileges() []grants.Privilege {
	return append(grants.Replay(),
		grants.Privilege{Kind: "TABLE", Object: "dead_letters", Action: "SELECT"},
		grants.Privilege{Kind: "TABLE", Object: "dead_letters", Action: "DELETE"})
}
