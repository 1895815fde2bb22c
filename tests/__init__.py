"""The channels-lite test suite (a package, so ``tests._redis`` is importable)."""

from __future__ import annotations
