-- second database on the same server: Optuna uses `optuna` (POSTGRES_DB), MLflow uses `mlflow`
CREATE DATABASE mlflow OWNER autotune ENCODING 'UTF8';
