"""Worker: runs ASGI 3 apps for connections it takes from Redis.

The implementation lands with the distributed-ASGI issue; see docs/architecture.md.
"""
