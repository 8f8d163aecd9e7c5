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
