"""Shipping a run to where it serves: the bundle, deploy to one device or a fleet, and Triton's repository."""
