"""Turning a resolved profile and an argv into a running, registered agent (one module per mode)."""
