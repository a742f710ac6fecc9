"""Prefect flows, the entry points: they read like the mission and delegate everything to tasks."""
