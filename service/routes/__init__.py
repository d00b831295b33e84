"""HTTP routes, one module per resource; each handler only parses, delegates to the engine and returns."""
