"""The router's HTTP surface, one module per concern."""
