//go:build !wasip1

package warren

// Natively (go test) there is no host: its imports say so.

// PublishEvent publishes an event to stream's exchange (`<stream>.topic.exchange`).
func PublishEvent(stream, routingKey string, body []byte, headers Headers) error {
	return ErrNotInWarren
}

// SendRequest sends a request to service (`<service>.direct.exchange.request`); its
// response arrives at this service's [[response]] handler.
func SendRequest(service, routingKey string, body []byte, headers Headers) error {
	return ErrNotInWarren
}

// SendToQueue publishes to queue as goamqp's queue publisher does.
func SendToQueue(queue, routingKey string, body []byte, headers Headers) error {
	return ErrNotInWarren
}

// PublishResponse answers service later, as goamqp's PublishServiceResponse does
// (`<S>.headers.exchange.response`, header `service` = service).
func PublishResponse(service, routingKey string, body []byte, headers Headers) error {
	return ErrNotInWarren
}

// Log writes a line to the host's log; natively it is dropped.
func Log(level Level, message string) {}

// ConfigGet is the config value of key ([plugin.<name>.config] or config_files) and whether
// the plugin has it.
func ConfigGet(key string) (string, bool, error) {
	return "", false, ErrNotInWarren
}

// ConfigGetAll is every config key of this plugin with its value.
func ConfigGetAll() (map[string]string, error) {
	return nil, ErrNotInWarren
}

// Bucket is an open bucket of keys and values (wasi:keyvalue/store), granted in the host's
// config. Natively there is none: OpenBucket returns ErrNotInWarren.
type Bucket struct {
	name string
}

// OpenBucket opens the bucket name (granted with keyvalue = ["<name>"]).
func OpenBucket(name string) (*Bucket, error) {
	return nil, ErrNotInWarren
}

// Get is the value of key and whether it exists.
func (b *Bucket) Get(key string) ([]byte, bool, error) { return nil, false, ErrNotInWarren }

// Set sets key to value.
func (b *Bucket) Set(key string, value []byte) error { return ErrNotInWarren }

// Delete deletes key (nothing happens when it does not exist).
func (b *Bucket) Delete(key string) error { return ErrNotInWarren }

// Exists says whether key exists.
func (b *Bucket) Exists(key string) (bool, error) { return false, ErrNotInWarren }

// Keys is every key of the bucket.
func (b *Bucket) Keys() ([]string, error) { return nil, ErrNotInWarren }

// Increment adds delta to the counter key (a missing key counts from 0) and returns the new
// value; atomic, also across hosts sharing a Redis.
func (b *Bucket) Increment(key string, delta uint64) (uint64, error) { return 0, ErrNotInWarren }

// CompareAndSwap sets key to value only if its value is expected (nil: only if it does not
// exist), and says whether it did. Atomic.
func (b *Bucket) CompareAndSwap(key string, expected, value []byte) (bool, error) {
	return false, ErrNotInWarren
}

// Close releases the bucket handle.
func (b *Bucket) Close() {}
