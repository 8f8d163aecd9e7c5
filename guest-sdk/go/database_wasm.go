//go:build wasip1

package warren

// Postgres inside Warren: the spin:postgres bindings `warren build` generates.

import (
	"encoding/json"
	"fmt"
	"math"
	"time"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	pg "wit_component/spin_postgres_postgres"
)

// Database is a connection to a Postgres database the host grants this plugin.
type Database struct {
	name  string
	inner *pg.Connection
}

func databaseError(what string, err pg.Error) error {
	switch err.Tag() {
	case pg.Error_ConnectionFailed:
		return &DatabaseError{Kind: "connection-failed", Message: what + ": " + err.ConnectionFailed()}
	case pg.Error_BadParameter:
		return &DatabaseError{Kind: "bad-parameter", Message: what + ": " + err.BadParameter()}
	case pg.Error_ValueConversionFailed:
		return &DatabaseError{Kind: "value-conversion-failed", Message: what + ": " + err.ValueConversionFailed()}
	case pg.Error_QueryFailed:
		failed := err.QueryFailed()
		if failed.Tag() == pg.QueryError_DbError {
			db := failed.DbError()
			message := fmt.Sprintf("%s: %s (SQLSTATE %s)", what, db.Message, db.Code)
			return &DatabaseError{Kind: "query-failed", SQLState: db.Code, Message: message}
		}
		return &DatabaseError{Kind: "query-failed", Message: what + ": " + failed.Text()}
	default:
		return &DatabaseError{Kind: "other", Message: what + ": " + err.Other()}
	}
}

// OpenDatabase opens the granted database name (granted with databases = ["<name>"]; a name,
// never a URL).
func OpenDatabase(name string) (*Database, error) {
	result := pg.ConnectionOpen(name)
	if result.IsErr() {
		return nil, databaseError(fmt.Sprintf("open database %q", name), result.Err())
	}
	return &Database{name: name, inner: result.Ok()}, nil
}

// Execute runs a statement that returns no rows, with params bound to $1, $2, …; the number
// of rows it affected.
func (d *Database) Execute(statement string, params ...any) (uint64, error) {
	bound, err := parameters(params)
	if err != nil {
		return 0, err
	}
	result := d.inner.Execute(statement, bound)
	if result.IsErr() {
		return 0, databaseError(fmt.Sprintf("database %q", d.name), result.Err())
	}
	return result.Ok(), nil
}

// Query runs a query with params bound to $1, $2, …: its column names and rows.
func (d *Database) Query(statement string, params ...any) (*Rows, error) {
	bound, err := parameters(params)
	if err != nil {
		return nil, err
	}
	result := d.inner.Query(statement, bound)
	if result.IsErr() {
		return nil, databaseError(fmt.Sprintf("database %q", d.name), result.Err())
	}
	set := result.Ok()
	rows := &Rows{Columns: make([]string, len(set.Columns)), Rows: make([][]any, len(set.Rows))}
	for i, column := range set.Columns {
		rows.Columns[i] = column.Name
	}
	for i, row := range set.Rows {
		rows.Rows[i] = make([]any, len(row))
		for j, value := range row {
			rows.Rows[i][j] = fromDbValue(value)
		}
	}
	return rows, nil
}

// Close releases the connection (the host keeps the pooled one for the rest of the call).
func (d *Database) Close() {
	d.inner.Drop()
}

func parameters(params []any) ([]pg.ParameterValue, error) {
	bound := make([]pg.ParameterValue, len(params))
	for i, param := range params {
		value, err := toParameter(param)
		if err != nil {
			return nil, &DatabaseError{Kind: "bad-parameter", Message: fmt.Sprintf("parameter $%d: %v", i+1, err)}
		}
		bound[i] = value
	}
	return bound, nil
}

func toParameter(param any) (pg.ParameterValue, error) {
	switch v := param.(type) {
	case nil:
		return pg.MakeParameterValueDbNull(), nil
	case bool:
		return pg.MakeParameterValueBoolean(v), nil
	case int:
		return pg.MakeParameterValueInt64(int64(v)), nil
	case int8:
		return pg.MakeParameterValueInt64(int64(v)), nil
	case int16:
		return pg.MakeParameterValueInt64(int64(v)), nil
	case int32:
		return pg.MakeParameterValueInt64(int64(v)), nil
	case int64:
		return pg.MakeParameterValueInt64(v), nil
	case uint8:
		return pg.MakeParameterValueInt64(int64(v)), nil
	case uint16:
		return pg.MakeParameterValueInt64(int64(v)), nil
	case uint32:
		return pg.MakeParameterValueInt64(int64(v)), nil
	case uint:
		return toParameter(uint64(v))
	case uint64:
		if v > math.MaxInt64 {
			return pg.ParameterValue{}, fmt.Errorf("%d is past a Postgres bigint", v)
		}
		return pg.MakeParameterValueInt64(int64(v)), nil
	case float32:
		return pg.MakeParameterValueFloating32(v), nil
	case float64:
		return pg.MakeParameterValueFloating64(v), nil
	case string:
		return pg.MakeParameterValueStr(v), nil
	case []byte:
		return pg.MakeParameterValueBinary(v), nil
	case time.Time:
		t := v.UTC()
		return pg.MakeParameterValueDatetime(witTypes.Tuple7[int32, uint8, uint8, uint8, uint8, uint8, uint32]{
			F0: int32(t.Year()), F1: uint8(t.Month()), F2: uint8(t.Day()),
			F3: uint8(t.Hour()), F4: uint8(t.Minute()), F5: uint8(t.Second()), F6: uint32(t.Nanosecond()),
		}), nil
	case time.Duration:
		return pg.MakeParameterValueInterval(pg.Interval{Micros: v.Microseconds()}), nil
	case Interval:
		return pg.MakeParameterValueInterval(pg.Interval{Micros: v.Micros, Days: v.Days, Months: v.Months}), nil
	case json.RawMessage:
		return pg.MakeParameterValueJsonb(v), nil
	case map[string]any:
		text, err := json.Marshal(v)
		if err != nil {
			return pg.ParameterValue{}, err
		}
		return pg.MakeParameterValueJsonb(text), nil
	case []int64:
		return pg.MakeParameterValueArrayInt64(options(v, func(x int64) int64 { return x })), nil
	case []int:
		return pg.MakeParameterValueArrayInt64(options(v, func(x int) int64 { return int64(x) })), nil
	case []string:
		return pg.MakeParameterValueArrayStr(options(v, func(x string) string { return x })), nil
	default:
		return pg.ParameterValue{}, fmt.Errorf("cannot bind a %T: use nil, bool, an integer, a float, string, []byte, "+
			"time.Time, time.Duration, Interval, json.RawMessage, map[string]any, []int64, []int or []string", param)
	}
}

func options[T, U any](values []T, convert func(T) U) []witTypes.Option[U] {
	out := make([]witTypes.Option[U], len(values))
	for i, v := range values {
		out[i] = witTypes.Some(convert(v))
	}
	return out
}

func array[T any](values []witTypes.Option[T]) []any {
	out := make([]any, len(values))
	for i, v := range values {
		if v.IsSome() {
			out[i] = v.Some()
		}
	}
	return out
}

func fromDbValue(value pg.DbValue) any {
	switch value.Tag() {
	case pg.DbValue_Boolean:
		return value.Boolean()
	case pg.DbValue_Int8:
		return int64(value.Int8())
	case pg.DbValue_Int16:
		return int64(value.Int16())
	case pg.DbValue_Int32:
		return int64(value.Int32())
	case pg.DbValue_Int64:
		return value.Int64()
	case pg.DbValue_Floating32:
		return float64(value.Floating32())
	case pg.DbValue_Floating64:
		return value.Floating64()
	case pg.DbValue_Str:
		return value.Str()
	case pg.DbValue_Uuid:
		return value.Uuid()
	case pg.DbValue_Decimal:
		return value.Decimal()
	case pg.DbValue_Binary:
		return value.Binary()
	case pg.DbValue_Jsonb:
		return json.RawMessage(value.Jsonb())
	case pg.DbValue_Date:
		d := value.Date()
		return time.Date(int(d.F0), time.Month(d.F1), int(d.F2), 0, 0, 0, 0, time.UTC)
	case pg.DbValue_Time:
		t := value.Time()
		return time.Duration(t.F0)*time.Hour + time.Duration(t.F1)*time.Minute +
			time.Duration(t.F2)*time.Second + time.Duration(t.F3)
	case pg.DbValue_Datetime:
		d := value.Datetime()
		return time.Date(int(d.F0), time.Month(d.F1), int(d.F2), int(d.F3), int(d.F4), int(d.F5), int(d.F6), time.UTC)
	case pg.DbValue_Timestamp:
		return time.Unix(value.Timestamp(), 0).UTC()
	case pg.DbValue_ArrayInt32:
		values := value.ArrayInt32()
		out := make([]any, len(values))
		for i, v := range values {
			if v.IsSome() {
				out[i] = int64(v.Some())
			}
		}
		return out
	case pg.DbValue_ArrayInt64:
		return array(value.ArrayInt64())
	case pg.DbValue_ArrayDecimal:
		return array(value.ArrayDecimal())
	case pg.DbValue_ArrayStr:
		return array(value.ArrayStr())
	case pg.DbValue_Interval:
		i := value.Interval()
		return Interval{Months: i.Months, Days: i.Days, Micros: i.Micros}
	case pg.DbValue_Unsupported:
		return value.Unsupported()
	default:
		// db-null; the range types, which this host never reads back.
		return nil
	}
}
