"""A Hydra sweeper over Optuna's own API (optuna 4-5, SQLAlchemy 2): resumable, shared studies."""
