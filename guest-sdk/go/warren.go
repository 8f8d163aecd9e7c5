// Package warren writes Warren message handlers in Go.
//
// A Warren plugin is a WebAssembly component that exports the warren:plugin/handler world
// (wit/handler.wit). `warren build` compiles a Go module (a folder with a go.mod) into one,
// generating the component bindings in its build folder; this package hides them, so a
// plugin is one function registered in init, in the shape of a goamqp handler:
//
//	package main
//
//	import warren "warren/guest"
//
//	type Greet struct {
//		Name string `json:"name"`
//	}
//
//	func init() { warren.HandleJSON(greet) }
//
//	func greet(req *Greet, headers warren.Headers) (any, error) {
//		if req.Name == "" {
//			return nil, warren.BadRequest("name is required")
//		}
//		return map[string]string{"greeting": "Hello, " + req.Name + "!"}, nil
//	}
//
//	func main() {}
//
// A JSON handler gets the body parsed into its request type; a body that does not parse is a
// bad-request: the host rejects it and never retries it. The returned value is serialised
// as the JSON response body (a Response is sent as it is). For full control, Handle gets
// the whole Message.
//
// Errors map to the host's outcomes: BadRequest and Failed refuse the message for good,
// Retry asks for it again (a bounded number of times, then it is dead-lettered), and any
// other error is a Retry too, as goamqp requeues a message whose handler failed. A panic
// traps: the host discards the instance and rejects the message.
//
// The host's imports (PublishEvent, SendRequest, SendToQueue, PublishResponse, Log) are
// granted per plugin in the host's config. A refused or unconfirmed send returns a
// *SendError; returned from the handler as it is, a denial refuses the message and a failed
// send retries it.
//
// Config values ([plugin.<name>.config], and config_files for secrets) come from
// ConfigGet and ConfigRequire (the standard wasi:config/store). Buckets of keys and values
// that outlive a message ([plugin.<name>] keyvalue = ["counters"]) are opened with
// OpenBucket; a failure is a *KeyValueError, which, returned from the handler, refuses the
// message when the bucket is not granted and retries it otherwise.
//
// Postgres databases the host grants ([plugin.<name>] databases = ["orders"]) are opened by
// name with OpenDatabase; Execute and Query bind their parameters from plain Go values. A
// failure is a *DatabaseError (its SQLState is Postgres's code), which, returned from the
// handler, retries the message when the failure may pass and refuses it otherwise.
//
// Headers keep their AMQP types, as goamqp's Headers (a map[string]any) do: string,
// int64, float64, bool, []byte, map[string]any (a table), []any (an array), time.Time (a
// timestamp) and nil (void).
//
// Natively (go test), handlers are plain functions: call them, or Call to run one through
// the same parsing and error mapping the host uses. The host's imports exist only inside
// Warren; natively they return ErrNotInWarren.
package warren

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// Headers are a message's AMQP headers, as goamqp's Headers are.
type Headers map[string]any

// Message is one delivery.
type Message struct {
	// RoutingKey is the request's or event's routing key.
	RoutingKey string
	// Body is the message body, byte for byte as published.
	Body []byte
	// ContentType is the AMQP content type, "" when the publisher set none.
	ContentType string
	Headers     Headers
}

// Response is a handler's answer: the body and headers to add (the host sets `service`).
type Response struct {
	Body    []byte
	Headers Headers
}

// JSONResponse is a Response whose body is value serialised as JSON.
func JSONResponse(value any, headers Headers) (Response, error) {
	body, err := json.Marshal(value)
	if err != nil {
		return Response{}, Failed(fmt.Sprintf("cannot serialise the response: %v", err))
	}
	return Response{Body: body, Headers: headers}, nil
}

// Kind is how the host treats a refused message.
type Kind int

const (
	// KindBadRequest: the message can never be handled; rejected, never retried.
	KindBadRequest Kind = iota
	// KindRetry: a passing failure; requeued and retried a bounded number of times.
	KindRetry
	// KindFailed: the handler failed for good; rejected, not retried.
	KindFailed
)

func (k Kind) String() string {
	switch k {
	case KindBadRequest:
		return "bad-request"
	case KindRetry:
		return "retry"
	default:
		return "failed"
	}
}

// HandlerError refuses a message; its Kind says how the host treats it.
type HandlerError struct {
	Kind    Kind
	Message string
}

func (e *HandlerError) Error() string { return e.Kind.String() + ": " + e.Message }

// BadRequest refuses a message that can never be handled (rejected, never retried).
func BadRequest(message string) error { return &HandlerError{KindBadRequest, message} }

// Retry asks the host to deliver the message again later.
func Retry(message string) error { return &HandlerError{KindRetry, message} }

// Failed refuses a message for good (rejected, not retried).
func Failed(message string) error { return &HandlerError{KindFailed, message} }

// SendError is a send the host did not make.
type SendError struct {
	// Denied: the config does not grant this plugin that destination (permanent).
	// Otherwise the broker did not take it (may pass).
	Denied  bool
	Message string
}

func (e *SendError) Error() string {
	if e.Denied {
		return "denied: " + e.Message
	}
	return "send failed: " + e.Message
}

// KeyValueError is a key-value operation the host did not do.
type KeyValueError struct {
	// Denied: the bucket is not granted to this plugin, or the host has no store
	// (permanent). Otherwise the store failed or the call's deadline is near (may pass).
	Denied  bool
	Message string
}

func (e *KeyValueError) Error() string {
	if e.Denied {
		return "key-value denied: " + e.Message
	}
	return "key-value failed: " + e.Message
}

// ConfigRequire is the config value of key; a missing key is a Failed naming where to set it.
func ConfigRequire(key string) (string, error) {
	value, ok, err := ConfigGet(key)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", Failed(fmt.Sprintf("no config value %q: set it under [plugin.<name>.config] in the host's config", key))
	}
	return value, nil
}

// ErrNotInWarren is what the host's imports return outside a Warren host (in go test).
var ErrNotInWarren = errors.New("the host's imports exist only inside a Warren host")

// HandlerFunc handles one whole message.
type HandlerFunc func(message Message) (Response, error)

var registered HandlerFunc

// Handle registers the plugin's handler; call it from init.
func Handle(handler HandlerFunc) { registered = handler }

// HandleJSON registers a JSON handler; call it from init. The body is parsed into a new
// Req; one that does not parse is a bad-request.
func HandleJSON[Req any](handler func(request *Req, headers Headers) (any, error)) {
	Handle(JSON(handler))
}

// JSON turns a JSON handler into a HandlerFunc (what HandleJSON registers).
func JSON[Req any](handler func(request *Req, headers Headers) (any, error)) HandlerFunc {
	return func(message Message) (Response, error) {
		request := new(Req)
		if err := json.Unmarshal(message.Body, request); err != nil {
			return Response{}, BadRequest(fmt.Sprintf("the body is not the JSON %T expects: %v", *request, err))
		}
		result, err := handler(request, message.Headers)
		if err != nil {
			return Response{}, err
		}
		switch answer := result.(type) {
		case Response:
			return answer, nil
		case *Response:
			return *answer, nil
		default:
			return JSONResponse(answer, nil)
		}
	}
}

// Call runs handler on message as the host would, returning the response or the refusal
// the host would see (every error as a *HandlerError). For unit tests.
func Call(handler HandlerFunc, message Message) (Response, *HandlerError) {
	response, err := handler(message)
	if err != nil {
		return Response{}, refusal(err)
	}
	return response, nil
}

// refusal maps any error a handler returns to the host's outcome.
func refusal(err error) *HandlerError {
	var handlerError *HandlerError
	if errors.As(err, &handlerError) {
		return handlerError
	}
	var sendError *SendError
	if errors.As(err, &sendError) {
		if sendError.Denied {
			return &HandlerError{KindFailed, err.Error()}
		}
		return &HandlerError{KindRetry, err.Error()}
	}
	var keyValueError *KeyValueError
	if errors.As(err, &keyValueError) && keyValueError.Denied {
		return &HandlerError{KindFailed, err.Error()}
	}
	var databaseError *DatabaseError
	if errors.As(err, &databaseError) && !databaseError.Retryable() {
		return &HandlerError{KindFailed, err.Error()}
	}
	return &HandlerError{KindRetry, err.Error()}
}

// PublishJSON publishes value as JSON to stream's exchange with routingKey.
func PublishJSON(stream, routingKey string, value any, headers Headers) error {
	body, err := json.Marshal(value)
	if err != nil {
		return Failed(fmt.Sprintf("cannot serialise the event: %v", err))
	}
	return PublishEvent(stream, routingKey, body, headers)
}

// SendRequestJSON sends value as a JSON request to service.
func SendRequestJSON(service, routingKey string, value any, headers Headers) error {
	body, err := json.Marshal(value)
	if err != nil {
		return Failed(fmt.Sprintf("cannot serialise the request: %v", err))
	}
	return SendRequest(service, routingKey, body, headers)
}

// PublishResponseJSON answers service later with value as JSON (goamqp's
// PublishServiceResponse).
func PublishResponseJSON(service, routingKey string, value any, headers Headers) error {
	body, err := json.Marshal(value)
	if err != nil {
		return Failed(fmt.Sprintf("cannot serialise the response: %v", err))
	}
	return PublishResponse(service, routingKey, body, headers)
}

// Level is a log line's level.
type Level int

const (
	LevelTrace Level = iota
	LevelDebug
	LevelInfo
	LevelWarn
	LevelError
)

// Debug, Info, Warn and Error write a line to the host's log, tagged with the plugin.
func Debug(message string) { Log(LevelDebug, message) }
func Info(message string)  { Log(LevelInfo, message) }
func Warn(message string)  { Log(LevelWarn, message) }
func Error(message string) { Log(LevelError, message) }

// headerValue checks that value is one of the AMQP types a header can carry and puts it in
// its canonical Go type (any integer becomes int64, float32 float64).
func headerValue(name string, value any) (any, error) {
	switch v := value.(type) {
	case nil, string, int64, float64, bool, []byte, map[string]any, []any, time.Time:
		return v, nil
	case int:
		return int64(v), nil
	case int8:
		return int64(v), nil
	case int16:
		return int64(v), nil
	case int32:
		return int64(v), nil
	case uint8:
		return int64(v), nil
	case uint16:
		return int64(v), nil
	case uint32:
		return int64(v), nil
	case uint:
		return headerValue(name, uint64(v))
	case uint64:
		if v > math.MaxInt64 {
			return nil, Failed(fmt.Sprintf("header %q: %d is past an AMQP long (int64)", name, v))
		}
		return int64(v), nil
	case float32:
		return float64(v), nil
	case Headers:
		return map[string]any(v), nil
	default:
		return nil, Failed(fmt.Sprintf("header %q cannot be a %T: use string, an integer, float64, bool, []byte, map[string]any, []any, time.Time or nil", name, value))
	}
}

// decodeJSON parses a table's or an array's JSON as the host sends it, integers as int64.
func decodeJSON(text string) any {
	var value any
	decoder := json.NewDecoder(strings.NewReader(text))
	decoder.UseNumber()
	if decoder.Decode(&value) != nil {
		return text
	}
	return integers(value)
}

func integers(value any) any {
	switch v := value.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	case map[string]any:
		for key, inner := range v {
			v[key] = integers(inner)
		}
	case []any:
		for i, inner := range v {
			v[i] = integers(inner)
		}
	}
	return value
}
