"""`w2s cache`: one entry for both engines, so neither engine module imports the other."""

from __future__ import annotations

from w2s.cache.build import build_cache, print_summary, setup
from w2s.cache.config import CacheConfig


def run(config: CacheConfig) -> dict:
    """`w2s cache`: setup, build (in this process, or on Ray with engine=ray), and a one-screen summary."""
    if config.engine == "ray":
        from w2s.cache.ray_engine import run_on_ray

        return run_on_ray(config)
    job = setup(config)
    body = build_cache(job)
    print_summary(job, body)
    return body
