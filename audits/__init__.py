"""Pure audit logic: data in, AuditResult out.

Nothing in this package imports prefect or mlflow (tests/unit/test_architecture.py enforces it),
so every audit runs on tiny data in milliseconds, without a server.
"""
