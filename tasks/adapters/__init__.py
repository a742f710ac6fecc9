"""Plain Python that talks to the outside: settings files, datasets, models, MLflow.

May import mlflow, never prefect. Four modules write to MLflow, each its own part: ``mlflow_sink`` the audit's runs,
``version_state`` the audit state on model versions and aliases, ``demo`` registering models, ``webhook`` the webhook.
"""
