"""Protocol server: terminates HTTP and WebSocket and forwards ASGI events over Redis.

The implementation lands with the distributed-ASGI issue; see docs/architecture.md.
"""
