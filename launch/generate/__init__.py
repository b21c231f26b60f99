"""Files derived from the one config for other tools: the Helm chart's values and schema,
Prometheus rules and the Grafana dashboard."""
