package migrations

// Scans exposes migrationScans: the tables a migration marks as scanned.
func Scans(sql string) []string { return migrationScans(sql) }
