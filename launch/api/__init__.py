"""The request path: what runs in an engine replica's process to answer a request."""
