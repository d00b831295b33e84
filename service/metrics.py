"""Prometheus metrics, one registry per app (so several apps in one process never clash), and the ASGI
middleware that counts requests by route template (not raw path, which would let clients mint labels)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTE_TEMPLATE_KEY = "alpro.route_template"  # set in the scope by code that answers without the router
STAGES = ("encode", "faiss", "db", "rerank", "decode", "video_encode", "qa")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class Metrics:
    """All the service's metrics, registered on a private CollectorRegistry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_seconds = Histogram("alpro_stage_seconds", "Time per request in each pipeline stage",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("alpro_http_requests", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("alpro_http_request_seconds", "HTTP request latency by route template",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.cache_lookups = Counter("alpro_cache_lookups", "Token-feature cache lookups", ["cache", "result"],
                                     registry=r)
        self.cache_bytes = Gauge("alpro_cache_bytes", "Bytes held by each token-feature cache", ["cache"], registry=r)
        self.batch_size = Histogram("alpro_encoder_batch_size", "Queries per text-encoder call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("alpro_model_queue_depth", "Model jobs waiting", registry=r)
        self.decode_jobs = Gauge("alpro_decode_jobs", "Video decodes admitted and not finished", registry=r)
        self.deadlines = Counter("alpro_deadline_exceeded", "Requests stopped at ALPRO_REQUEST_TIMEOUT_S", registry=r)
        self.rejected = Counter("alpro_overload_rejections", "Requests refused with 503 because the queue was full",
                                registry=r)
        self.in_flight = Gauge("alpro_http_requests_in_flight", "HTTP requests being answered now", registry=r)
        self.index_version = Gauge("alpro_index_version", "Index version being served (-1: none)", registry=r)
        self.index_swaps = Counter("alpro_index_swaps", "Index versions switched to without a restart", registry=r)
        self.index_version.set(-1)
        # children made once: every stage visible from the first scrape, and no label lookup per request
        self._stages = {stage: self.stage_seconds.labels(stage) for stage in STAGES}

    def observe_stage(self, stage: str, seconds: float) -> None:
        child = self._stages.get(stage)
        (child if child is not None else self.stage_seconds.labels(stage)).observe(seconds)

    def cache_lookup(self, cache: str, hit: bool) -> None:
        self.cache_lookups.labels(cache, "hit" if hit else "miss").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its matched route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            template = scope.get(ROUTE_TEMPLATE_KEY) or getattr(scope.get("route"), "path", None) or "unmatched"
            key = (scope["method"], template, status)
            children = self._children.get(key)
            if children is None:  # route templates, methods and statuses are few: bound once each
                children = self._children[key] = (self.metrics.requests.labels(scope["method"], template, str(status)),
                                                  self.metrics.request_seconds.labels(template))
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
