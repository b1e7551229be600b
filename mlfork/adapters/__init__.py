"""Adapters: the only modules that import pygit2, dvc, hydra and mlflow."""
