"""Files derived from sources for other tools and for these docs: the Helm chart's values and
schema, Prometheus rules and the Grafana dashboard, the Configuration page's reference and the
benchmark index (``make generate``)."""
