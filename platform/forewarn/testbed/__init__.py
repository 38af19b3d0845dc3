"""The planted-failure testbed: tiny models with known failures, the default world of every job.

from forewarn.testbed import build_testbed, resolve_model
manifest = build_testbed(size="small")          # built once, then reused from the cache
manifest.path("target"), manifest.planted_topics, manifest.trigger
resolve_model("testbed:target")                  # -> local HF folder of the full world
"""

from forewarn.testbed.build import VERSION, build_testbed, cache_root, resolve_model, resolve_path
from forewarn.testbed.manifest import Manifest

__all__ = ["VERSION", "Manifest", "build_testbed", "cache_root", "resolve_model", "resolve_path"]
