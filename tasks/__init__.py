"""Prefect tasks (thin wrappers with retries and names) and, in tasks.adapters, the plain-Python
code that talks to the outside world: configuration files, datasets, the MLflow registry and store."""
