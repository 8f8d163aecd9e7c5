// A Warren plugin in Go: `warren build` compiles this module into greet-go.wasm (it needs
// Go 1.27.1 or newer; the component bindings are generated in the build folder).
module greet-go

go 1.24

require warren/guest v0.0.0

replace warren/guest => ../../guest-sdk/go
