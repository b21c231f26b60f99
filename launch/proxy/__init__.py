"""HAProxy's side of the request path: what Ray's HAProxy answers itself (no replica reachable, a
replica that closed without answering, a request that is not HTTP, no application yet) is the
API's error JSON, not HAProxy's or Ray's plain pages."""
