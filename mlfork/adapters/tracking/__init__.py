"""The MLflow adapter: the only package that imports mlflow.

Always an explicit `MlflowClient(tracking_uri=...)`, never the fluent, process-global API.
store.py: URIs, store and key checks; writer.py: idempotent writes (runs found by their
`mlfork.run` tag, metrics with deterministic timestamps, params once, tags overwritten);
reader.py: the listings and metric histories that stitching reads.
"""
