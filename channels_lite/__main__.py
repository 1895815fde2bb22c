"""``python -m channels_lite``: the same CLI as the ``channels-lite`` command."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
