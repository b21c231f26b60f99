"""HAProxy's side of the request path: what Ray's HAProxy answers itself (no replica reachable, a
replica that closed without answering, no application yet, the image-affinity router down) is
the API's error JSON, not HAProxy's or Ray's plain pages."""
