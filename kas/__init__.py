"""kas: run coding agents at reduced CPU and I/O priority so the desktop stays responsive."""

__version__ = "0.1.0"
