package main

import (
	"testing"

	warren "warren/guest"
)

func TestGreetsByName(t *testing.T) {
	response, refused := warren.Call(warren.JSON(greet), warren.Message{Body: []byte(`{"name":"Ada"}`)})
	if refused != nil {
		t.Fatal(refused)
	}
	if got := string(response.Body); got != `{"greeting":"Hello, Ada!"}` {
		t.Fatalf("got %s", got)
	}
}

func TestABodyThatIsNotSuchJSONIsABadRequest(t *testing.T) {
	for _, body := range []string{"hello", `{"nom":"Ada"}`, `{"name":42}`, `[1]`, `{"name":null}`, ""} {
		_, refused := warren.Call(warren.JSON(greet), warren.Message{Body: []byte(body)})
		if refused == nil || refused.Kind != warren.KindBadRequest {
			t.Errorf("%q: want a bad-request, got %v", body, refused)
		}
	}
}
