//go:build !wasip1

package warren

// Natively (go test) there is no database to reach: OpenDatabase says so.

// Database is a connection to a Postgres database the host grants this plugin. Natively there
// is none: OpenDatabase returns ErrNotInWarren.
type Database struct {
	name string
}

// OpenDatabase opens the granted database name (granted with databases = ["<name>"]).
func OpenDatabase(name string) (*Database, error) {
	return nil, ErrNotInWarren
}

// Execute runs a statement that returns no rows; the number of rows it affected.
func (d *Database) Execute(statement string, params ...any) (uint64, error) { return 0, ErrNotInWarren }

// Query runs a query: its column names and rows.
func (d *Database) Query(statement string, params ...any) (*Rows, error) { return nil, ErrNotInWarren }

// Close releases the connection.
func (d *Database) Close() {}
