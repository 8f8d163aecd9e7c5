package warren

// Postgres through Spin's spin:postgres/postgres@4.0.0, on the databases the host's config
// grants this plugin ([plugin.<name>] databases = ["orders"]):
//
//	db, err := warren.OpenDatabase("orders")
//	if err != nil {
//		return nil, err
//	}
//	defer db.Close()
//	_, err = db.Execute("INSERT INTO orders (id, amount) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", id, amount)
//	rows, err := db.Query("SELECT amount FROM orders WHERE id = $1", id)
//
// OpenDatabase takes the NAME of a granted database, never a URL. Parameters are always bound
// ($1, $2, …), never spliced into the statement; each is a plain Go value: nil, bool, any
// integer, float32/float64, string (also for numeric, uuid and json columns), []byte,
// time.Time, time.Duration or Interval (an interval), json.RawMessage or map[string]any
// (JSON), []int64, []int or []string (an array). Values read back as nil, bool, int64,
// float64, string (text, numeric with no precision lost, uuid), []byte, time.Time (dates and
// timestamps, UTC), time.Duration (a time of day, since midnight), json.RawMessage, []any (an
// array) and Interval; a type the interface lacks as its raw []byte.
//
// A failure is a *DatabaseError carrying Postgres's SQLSTATE; returned from the handler as it
// is, it retries the message when the failure may pass (the database unreachable, a
// serialization failure or deadlock, the deadline near) and refuses it otherwise (a statement
// or value that can never succeed, a database not granted). Natively (go test) OpenDatabase
// returns ErrNotInWarren.

import "strings"

// DatabaseError is a database call that did not succeed.
type DatabaseError struct {
	// Kind is the interface's case: connection-failed, bad-parameter, query-failed,
	// value-conversion-failed or other.
	Kind string
	// SQLState is Postgres's code ("23505" for a unique violation) when the server sent an
	// error, else "".
	SQLState string
	Message  string
}

func (e *DatabaseError) Error() string { return e.Message }

// Retryable says whether the same call may pass later: what the host does with the message
// when the handler returns this error (retry, else failed).
func (e *DatabaseError) Retryable() bool {
	switch {
	case e.Kind == "connection-failed":
		return !strings.Contains(e.Message, "may not open database")
	case e.SQLState != "":
		// 08 connection, 40 rollback (serialization, deadlock), 53 resources, 57 operator
		// intervention (shutdown, cancel); 55P03 lock not available.
		for _, class := range []string{"08", "40", "53", "57", "55P03"} {
			if strings.HasPrefix(e.SQLState, class) {
				return true
			}
		}
		return false
	case e.Kind == "query-failed":
		return strings.Contains(e.Message, "deadline")
	default:
		return e.Kind == "other"
	}
}

// Rows is what a query returned: the column names, and each row's values in column order.
type Rows struct {
	Columns []string
	Rows    [][]any
}

// Interval is a Postgres interval: months, days and microseconds, kept apart as Postgres does.
type Interval struct {
	Months int32
	Days   int32
	Micros int64
}
