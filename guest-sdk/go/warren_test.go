package warren

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func TestErrorsMapToTheHostsOutcomes(t *testing.T) {
	cases := []struct {
		err  error
		want Kind
	}{
		{BadRequest("no name"), KindBadRequest},
		{Retry("later"), KindRetry},
		{Failed("broken"), KindFailed},
		{errors.New("plain: goamqp requeues it"), KindRetry},
		{&SendError{Denied: true, Message: "not granted"}, KindFailed},
		{&SendError{Message: "unconfirmed"}, KindRetry},
	}
	for _, c := range cases {
		if got := refusal(c.err).Kind; got != c.want {
			t.Errorf("%v: got %v, want %v", c.err, got, c.want)
		}
	}
}

func TestHeaderValuesTakeTheirAMQPTypes(t *testing.T) {
	when := time.Unix(1_700_000_000, 0)
	cases := map[string][2]any{
		"int":    {7, int64(7)},
		"uint32": {uint32(7), int64(7)},
		"float":  {float32(2.5), float64(2.5)},
		"text":   {"x", "x"},
		"time":   {when, when},
		"table":  {Headers{"a": "b"}, map[string]any{"a": "b"}},
		"void":   {nil, nil},
	}
	for name, c := range cases {
		got, err := headerValue(name, c[0])
		if err != nil || !reflect.DeepEqual(got, c[1]) {
			t.Errorf("%s: got %#v, %v", name, got, err)
		}
	}
	if _, err := headerValue("big", uint64(1)<<63); err == nil {
		t.Error("a uint64 past int64 is refused")
	}
	if _, err := headerValue("chan", make(chan int)); err == nil {
		t.Error("a channel is no header value")
	}
}

func TestTablesKeepTheirIntegers(t *testing.T) {
	got := decodeJSON(`{"n":1,"f":1.5,"list":[2,"x"]}`)
	want := map[string]any{"n": int64(1), "f": 1.5, "list": []any{int64(2), "x"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v", got)
	}
	if got := decodeJSON("not json"); got != "not json" {
		t.Errorf("unparseable text stays text, got %#v", got)
	}
}

func TestAJSONHandlerRefusesABodyThatDoesNotParse(t *testing.T) {
	type In struct{ N int }
	handler := JSON(func(in *In, _ Headers) (any, error) { return map[string]int{"twice": in.N * 2}, nil })
	response, refused := Call(handler, Message{Body: []byte(`{"N":21}`)})
	if refused != nil || string(response.Body) != `{"twice":42}` {
		t.Fatalf("got %s, %v", response.Body, refused)
	}
	if _, refused := Call(handler, Message{Body: []byte(`{"N":"x"}`)}); refused == nil || refused.Kind != KindBadRequest {
		t.Fatalf("want a bad-request, got %v", refused)
	}
	if err := PublishEvent("s", "k", nil, nil); !errors.Is(err, ErrNotInWarren) {
		t.Fatalf("natively the host's imports say so, got %v", err)
	}
	if err := PublishResponseJSON("orders", "k", map[string]int{"n": 1}, nil); !errors.Is(err, ErrNotInWarren) {
		t.Fatalf("natively publishing a response says so too, got %v", err)
	}
}

func TestKeyValueErrorsMapToTheHostsOutcomes(t *testing.T) {
	if got := refusal(&KeyValueError{Denied: true, Message: "bucket 'x' not granted"}); got.Kind != KindFailed {
		t.Fatalf("a denied bucket is %v, want failed", got.Kind)
	}
	if got := refusal(&KeyValueError{Message: "store down"}); got.Kind != KindRetry {
		t.Fatalf("a failed store operation is %v, want retry", got.Kind)
	}
}

func TestNativelyConfigAndKeyValueSayThereIsNoHost(t *testing.T) {
	if _, _, err := ConfigGet("greeting"); !errors.Is(err, ErrNotInWarren) {
		t.Fatalf("ConfigGet natively: %v", err)
	}
	if _, err := ConfigRequire("greeting"); !errors.Is(err, ErrNotInWarren) {
		t.Fatalf("ConfigRequire natively: %v", err)
	}
	if _, err := ConfigGetAll(); !errors.Is(err, ErrNotInWarren) {
		t.Fatalf("ConfigGetAll natively: %v", err)
	}
	if _, err := OpenBucket("counters"); !errors.Is(err, ErrNotInWarren) {
		t.Fatalf("OpenBucket natively: %v", err)
	}
}

func TestDatabaseErrorsMapToTheHostsOutcomes(t *testing.T) {
	cases := []struct {
		err  *DatabaseError
		want Kind
	}{
		{&DatabaseError{Kind: "connection-failed", Message: "connection refused"}, KindRetry},
		{&DatabaseError{Kind: "connection-failed", Message: "plugin 'x' may not open database 'y'"}, KindFailed},
		{&DatabaseError{Kind: "query-failed", SQLState: "23505", Message: "duplicate key (SQLSTATE 23505)"}, KindFailed},
		{&DatabaseError{Kind: "query-failed", SQLState: "40001", Message: "could not serialize"}, KindRetry},
		{&DatabaseError{Kind: "query-failed", Message: "ran past the call's deadline"}, KindRetry},
		{&DatabaseError{Kind: "bad-parameter", Message: "does not fit"}, KindFailed},
	}
	for _, c := range cases {
		if got := refusal(fmt.Errorf("storing: %w", c.err)); got.Kind != c.want {
			t.Errorf("%q is %v, want %v", c.err.Message, got.Kind, c.want)
		}
	}
	if _, err := OpenDatabase("orders"); !errors.Is(err, ErrNotInWarren) {
		t.Fatalf("OpenDatabase natively: %v", err)
	}
}
