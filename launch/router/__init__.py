"""The ingress request router's policy, run in Ray Serve LLM's router replica (``LLMRouter``),
which HAProxy asks for each request's engine replica: ``affinity`` (the policy) and
``media_keys`` (what it routes on). Deployed only with ``deployment.routing.image_affinity``."""
