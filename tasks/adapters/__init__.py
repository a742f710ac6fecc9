"""Plain Python that talks to the outside: settings files, datasets, models, the MLflow sink.

May import mlflow, never prefect. ``mlflow_sink`` is the only module that writes to MLflow.
"""
