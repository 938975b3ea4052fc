// Package deadletter is what an operator does with the dead letters the
// functions keep (see [store.Store.AddDeadLetter]): list them, read one
// whole to replay it, and delete it, each on one administrative connection
// ([store.AdminConn]); and the privileges a role needs for that,
// [OperatorPrivileges].
//
// Replaying itself goes through the function (function.Service.Replay), so
// that a replayed event is decoded and deduplicated exactly as a delivery
// is; [store.DeadLetter.NotReplayable] says when a kept event cannot be.
package deadletter
