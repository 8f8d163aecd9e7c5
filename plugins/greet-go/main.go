// greet-go: {"name": "Ada"} -> {"greeting": "Hello, Ada!"}; anything else is a bad-request.
package main

import warren "warren/guest"

// Greet is the request.
type Greet struct {
	Name *string `json:"name"`
}

// Greeting is the response.
type Greeting struct {
	Greeting string `json:"greeting"`
}

func init() { warren.HandleJSON(greet) }

// greet greets the person named in the request.
func greet(request *Greet, headers warren.Headers) (any, error) {
	if request.Name == nil {
		return nil, warren.BadRequest("name is required")
	}
	return Greeting{Greeting: "Hello, " + *request.Name + "!"}, nil
}

// A plugin is a library the host calls: main never runs.
func main() {}
