"""The part of edgetl that must run on a bare device: standard library and numpy only.

The package imports it, and the deploy bundle ships it next to the device entry point, so both sides use
one copy of what they must agree on (engine names, the sidecar, hashes, ...). `tests/test_portable.py`
fails if any module here imports anything else. Import siblings relatively: on the device this folder is
unpacked as a top-level package.
"""
