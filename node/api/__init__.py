"""The node's HTTP layer: thin routes that parse, call the runtime and shape replies."""
