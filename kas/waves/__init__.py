"""Waves of tasks: load a plan, schedule with a concurrency cap, run with real launches."""
