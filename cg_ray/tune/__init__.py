"""Hyper-parameter search: the Tuner over the training run (`search`), the search space of the
config's `tune.space` (`space`), how trials are scheduled and stopped (`scheduling`) and their
MLflow runs and files (`trials`), and the report a search ends with: the trials' table,
hyper-parameter importances and pictures (`report`)."""
