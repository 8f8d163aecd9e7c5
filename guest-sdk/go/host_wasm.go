//go:build wasip1

package warren

// Inside Warren: the component bindings `warren build` generates into its build folder
// (module wit_component); never committed, never needed by go test.

import (
	"encoding/json"
	"fmt"
	"time"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
	"wit_component/warren_plugin_host"
	"wit_component/warren_plugin_keyvalue_cas"
	"wit_component/warren_plugin_types"
	"wit_component/wasi_config_store"
	"wit_component/wasi_keyvalue_atomics"
	"wit_component/wasi_keyvalue_store"
)

type witResult = witTypes.Result[warren_plugin_types.Response, warren_plugin_types.HandlerError]

// ServeComponent is the component export `handle`, called by the bindings `warren build`
// generates. Not for plugins to call.
func ServeComponent(request warren_plugin_types.Request, headers []warren_plugin_types.Header) witResult {
	if registered == nil {
		return witTypes.Err[warren_plugin_types.Response](warren_plugin_types.MakeHandlerErrorFailed(
			"the plugin registered no handler: call warren.Handle or warren.HandleJSON from init"))
	}
	message := Message{
		RoutingKey:  request.RoutingKey,
		Body:        request.Body,
		ContentType: request.ContentType.SomeOr(""),
		Headers:     fromWit(headers),
	}
	response, err := registered(message)
	if err == nil {
		var witHeaders []warren_plugin_types.Header
		witHeaders, err = toWit(response.Headers)
		if err == nil {
			body := response.Body
			if body == nil {
				body = []byte{}
			}
			return witTypes.Ok[warren_plugin_types.Response, warren_plugin_types.HandlerError](
				warren_plugin_types.Response{Body: body, Headers: witHeaders})
		}
	}
	refused := refusal(err)
	var witError warren_plugin_types.HandlerError
	switch refused.Kind {
	case KindBadRequest:
		witError = warren_plugin_types.MakeHandlerErrorBadRequest(refused.Message)
	case KindRetry:
		witError = warren_plugin_types.MakeHandlerErrorRetry(refused.Message)
	default:
		witError = warren_plugin_types.MakeHandlerErrorFailed(refused.Message)
	}
	return witTypes.Err[warren_plugin_types.Response](witError)
}

func fromWit(headers []warren_plugin_types.Header) Headers {
	result := make(Headers, len(headers))
	for _, header := range headers {
		value := header.Value
		switch value.Tag() {
		case warren_plugin_types.HeaderValue_Text:
			result[header.Name] = value.Text()
		case warren_plugin_types.HeaderValue_Integer:
			result[header.Name] = value.Integer()
		case warren_plugin_types.HeaderValue_Float:
			result[header.Name] = value.Float()
		case warren_plugin_types.HeaderValue_Boolean:
			result[header.Name] = value.Boolean()
		case warren_plugin_types.HeaderValue_Bytes:
			result[header.Name] = value.Bytes()
		case warren_plugin_types.HeaderValue_Table:
			result[header.Name] = decodeJSON(value.Table())
		case warren_plugin_types.HeaderValue_Array:
			result[header.Name] = decodeJSON(value.Array())
		case warren_plugin_types.HeaderValue_Timestamp:
			result[header.Name] = time.Unix(int64(value.Timestamp()), 0).UTC()
		default:
			result[header.Name] = nil
		}
	}
	return result
}

func toWit(headers Headers) ([]warren_plugin_types.Header, error) {
	result := make([]warren_plugin_types.Header, 0, len(headers))
	for name, raw := range headers {
		value, err := headerValue(name, raw)
		if err != nil {
			return nil, err
		}
		var wit warren_plugin_types.HeaderValue
		switch v := value.(type) {
		case string:
			wit = warren_plugin_types.MakeHeaderValueText(v)
		case int64:
			wit = warren_plugin_types.MakeHeaderValueInteger(v)
		case float64:
			wit = warren_plugin_types.MakeHeaderValueFloat(v)
		case bool:
			wit = warren_plugin_types.MakeHeaderValueBoolean(v)
		case []byte:
			wit = warren_plugin_types.MakeHeaderValueBytes(v)
		case map[string]any:
			text, err := json.Marshal(v)
			if err != nil {
				return nil, Failed(fmt.Sprintf("header %q: %v", name, err))
			}
			wit = warren_plugin_types.MakeHeaderValueTable(string(text))
		case []any:
			text, err := json.Marshal(v)
			if err != nil {
				return nil, Failed(fmt.Sprintf("header %q: %v", name, err))
			}
			wit = warren_plugin_types.MakeHeaderValueArray(string(text))
		case time.Time:
			wit = warren_plugin_types.MakeHeaderValueTimestamp(uint64(v.Unix()))
		default:
			wit = warren_plugin_types.MakeHeaderValueVoid()
		}
		result = append(result, warren_plugin_types.Header{Name: name, Value: wit})
	}
	return result, nil
}

type send func(string, string, []uint8, []warren_plugin_types.Header) witTypes.Result[witTypes.Unit, warren_plugin_host.SendError]

func sendWith(call send, to, routingKey string, body []byte, headers Headers) error {
	witHeaders, err := toWit(headers)
	if err != nil {
		return err
	}
	if body == nil {
		body = []byte{}
	}
	result := call(to, routingKey, body, witHeaders)
	if result.IsOk() {
		return nil
	}
	refused := result.Err()
	if refused.Tag() == warren_plugin_host.SendError_Denied {
		return &SendError{Denied: true, Message: refused.Denied()}
	}
	return &SendError{Message: refused.Failed()}
}

// PublishEvent publishes an event to stream's exchange (`<stream>.topic.exchange`),
// confirmed by the broker before it returns.
func PublishEvent(stream, routingKey string, body []byte, headers Headers) error {
	return sendWith(warren_plugin_host.PublishEvent, stream, routingKey, body, headers)
}

// SendRequest sends a request to service (`<service>.direct.exchange.request`); its
// response arrives at this service's [[response]] handler.
func SendRequest(service, routingKey string, body []byte, headers Headers) error {
	return sendWith(warren_plugin_host.SendRequest, service, routingKey, body, headers)
}

// SendToQueue publishes to queue as goamqp's queue publisher does.
func SendToQueue(queue, routingKey string, body []byte, headers Headers) error {
	return sendWith(warren_plugin_host.SendToQueue, queue, routingKey, body, headers)
}

// PublishResponse answers service later, as goamqp's PublishServiceResponse does: this
// service's own `<S>.headers.exchange.response`, routing key routingKey, header
// `service` = service (granted by `respond = ["<service>"]`), confirmed before it returns.
func PublishResponse(service, routingKey string, body []byte, headers Headers) error {
	return sendWith(warren_plugin_host.PublishResponse, service, routingKey, body, headers)
}

// Log writes a line to the host's log, tagged with the plugin's name.
func Log(level Level, message string) {
	warren_plugin_host.Log(warren_plugin_host.LogLevel(level), message)
}

func configError(what string, err wasi_config_store.Error) error {
	if err.Tag() == wasi_config_store.Error_Upstream {
		return fmt.Errorf("%s: %s", what, err.Upstream())
	}
	return fmt.Errorf("%s: %s", what, err.Io())
}

// ConfigGet is the config value of key ([plugin.<name>.config] or config_files) and whether
// the plugin has it.
func ConfigGet(key string) (string, bool, error) {
	result := wasi_config_store.Get(key)
	if result.IsErr() {
		return "", false, configError(fmt.Sprintf("config value %q", key), result.Err())
	}
	value := result.Ok()
	return value.SomeOr(""), value.IsSome(), nil
}

// ConfigGetAll is every config key of this plugin with its value.
func ConfigGetAll() (map[string]string, error) {
	result := wasi_config_store.GetAll()
	if result.IsErr() {
		return nil, configError("config values", result.Err())
	}
	values := make(map[string]string)
	for _, pair := range result.Ok() {
		values[pair.F0] = pair.F1
	}
	return values, nil
}

// Bucket is an open bucket of keys and values (wasi:keyvalue/store), granted in the host's
// config. Values are bytes; a counter is decimal text.
type Bucket struct {
	name  string
	inner *wasi_keyvalue_store.Bucket
}

func keyValueError(what string, err wasi_keyvalue_store.Error) error {
	switch err.Tag() {
	case wasi_keyvalue_store.Error_AccessDenied:
		return &KeyValueError{Denied: true, Message: what + ": the bucket is not granted to this plugin"}
	case wasi_keyvalue_store.Error_NoSuchStore:
		return &KeyValueError{Denied: true, Message: what + ": this host has no key-value store"}
	default:
		return &KeyValueError{Message: what + ": " + err.Other()}
	}
}

// OpenBucket opens the bucket name (granted with keyvalue = ["<name>"]).
func OpenBucket(name string) (*Bucket, error) {
	result := wasi_keyvalue_store.Open(name)
	if result.IsErr() {
		return nil, keyValueError(fmt.Sprintf("open bucket %q", name), result.Err())
	}
	return &Bucket{name: name, inner: result.Ok()}, nil
}

// Get is the value of key and whether it exists.
func (b *Bucket) Get(key string) ([]byte, bool, error) {
	result := b.inner.Get(key)
	if result.IsErr() {
		return nil, false, keyValueError(fmt.Sprintf("get %q", key), result.Err())
	}
	value := result.Ok()
	return value.SomeOr(nil), value.IsSome(), nil
}

// Set sets key to value.
func (b *Bucket) Set(key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	result := b.inner.Set(key, value)
	if result.IsErr() {
		return keyValueError(fmt.Sprintf("set %q", key), result.Err())
	}
	return nil
}

// Delete deletes key (nothing happens when it does not exist).
func (b *Bucket) Delete(key string) error {
	result := b.inner.Delete(key)
	if result.IsErr() {
		return keyValueError(fmt.Sprintf("delete %q", key), result.Err())
	}
	return nil
}

// Exists says whether key exists.
func (b *Bucket) Exists(key string) (bool, error) {
	result := b.inner.Exists(key)
	if result.IsErr() {
		return false, keyValueError(fmt.Sprintf("exists %q", key), result.Err())
	}
	return result.Ok(), nil
}

// Keys is every key of the bucket (read page by page).
func (b *Bucket) Keys() ([]string, error) {
	var keys []string
	cursor := witTypes.None[uint64]()
	for {
		result := b.inner.ListKeys(cursor)
		if result.IsErr() {
			return nil, keyValueError("list keys", result.Err())
		}
		page := result.Ok()
		keys = append(keys, page.Keys...)
		if page.Cursor.IsNone() {
			return keys, nil
		}
		cursor = page.Cursor
	}
}

// Increment adds delta to the counter key (a missing key counts from 0) and returns the new
// value; atomic, also across hosts sharing a Redis.
func (b *Bucket) Increment(key string, delta uint64) (uint64, error) {
	result := wasi_keyvalue_atomics.Increment(b.inner, key, delta)
	if result.IsErr() {
		return 0, keyValueError(fmt.Sprintf("increment %q", key), result.Err())
	}
	return result.Ok(), nil
}

// CompareAndSwap sets key to value only if its value is expected (nil: only if it does not
// exist), and says whether it did. Atomic.
func (b *Bucket) CompareAndSwap(key string, expected, value []byte) (bool, error) {
	old := witTypes.None[[]uint8]()
	if expected != nil {
		old = witTypes.Some[[]uint8](expected)
	}
	if value == nil {
		value = []byte{}
	}
	result := warren_plugin_keyvalue_cas.CompareAndSwap(b.inner, key, old, value)
	if result.IsErr() {
		return false, keyValueError(fmt.Sprintf("compare-and-swap %q", key), result.Err())
	}
	return result.Ok(), nil
}

// Close releases the bucket handle.
func (b *Bucket) Close() {
	b.inner.Drop()
}
