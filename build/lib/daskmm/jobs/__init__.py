"""Batch jobs: a YAML job file names the data, the model, the output and the cluster."""
