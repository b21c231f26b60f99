"""``deployment:``: replicas, autoscaling, queues, drain."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import _Strict


class Autoscaling(_Strict):
    min_replicas: int = Field(1, ge=0, description="Replicas at least (0: scale to zero).")
    max_replicas: int = Field(1, ge=1, description="Replicas at most.")
    target_ongoing_requests: float = Field(
        8, gt=0, description="Requests per replica the autoscaler aims at.")
    upscale_delay_s: float = Field(
        30, ge=0, description="How long demand must stay above target before a replica is added.")
    downscale_delay_s: float = Field(
        600, ge=0, description="How long demand must stay below target before one is removed.")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self


class RoutingSettings(_Strict):
    """Which replica a request goes to (``launch.router``)."""

    image_affinity: bool = Field(
        False, description="Send a request whose images or videos a replica handled recently to "
        "that replica, where vLLM's multimodal and prefix caches already hold them; requests "
        "without media, and any whose preferred replica is busier than affinity_max_load_gap, "
        "go to the least-loaded replica. Needs server.ray_ha_proxy (HAProxy asks the router "
        "for each request's replica, with the request body).")
    affinity_entries: int = Field(
        10000, ge=1, description="Media keys the router remembers (each maps to the replica "
        "that last handled it); the least recently used is dropped past this.")
    affinity_max_load_gap: int = Field(
        4, ge=0, description="The preferred replica is passed over when it holds more than this "
        "many requests beyond the least-loaded one.")
    load_report_s: float = Field(
        1.0, gt=0, description="How often each replica reports the requests it holds to the "
        "router (Ray Serve's request_routing_stats_period_s).")


class DeploymentSettings(_Strict):
    """How the engine is replicated by Ray Serve."""

    device: Literal["cpu", "gpu"] = Field(
        "cpu", description="Where each engine runs: cpu (vLLM's CPU backend) or gpu (one GPU per "
        "tensor-parallel rank).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica (GPU only).")
    replicas: int = Field(1, ge=1, description="Fixed replica count (ignored with autoscaling).")
    autoscaling: Autoscaling | None = Field(
        None, description="Ray Serve autoscaling by ongoing requests; None: a fixed replica count.")
    max_ongoing_requests: int = Field(
        32, ge=1, description="Requests each replica's engine runs at once (the autoscaler's "
        "and the router's measure of load).")
    max_queued_requests: int = Field(
        64, ge=0, description="Requests each replica holds waiting beyond max_ongoing_requests; "
        "past both, the client gets 503 overloaded with Retry-After at once.")
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After (seconds) on the replicas' 503s: overloaded, "
        "draining, engine lost. HAProxy's own 503s, answered with no replica to ask, say 1 s "
        "(5 s before the application's routes exist).")
    drain_timeout_s: float = Field(
        60, ge=0, description="On stop/redeploy/SIGTERM: how long running requests may finish.")
    health_check_period_s: float = Field(
        5, gt=0, description="How often Ray Serve checks each engine (3 misses: replaced).")
    cpus_per_replica: float = Field(1, gt=0, description="Ray CPUs reserved per engine replica.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for engine processes "
        "(they win over the stack's). The stack runs the replica's code on the loop that serves "
        "HTTP (RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0), so that the replica's server "
        "hands API requests to the API without Ray Serve's per-request wrapper; 1 here gives "
        "them back to the wrapper.")
    routing: RoutingSettings = Field(
        RoutingSettings(), description="Which replica each request goes to.")

    @property
    def most_replicas(self) -> int:
        """Replicas at most: the autoscaler's maximum, else the fixed count."""
        return self.autoscaling.max_replicas if self.autoscaling is not None else self.replicas

    @model_validator(mode="after")
    def _tp_needs_gpu(self):
        if self.device == "cpu" and self.tensor_parallel_size != 1:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs device: gpu "
                "(the CPU engine runs one process per replica)"
            )
        return self
