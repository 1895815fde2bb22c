"""Tests of the ``channels_lite`` package (mirrors its layout)."""
