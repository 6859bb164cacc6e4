"""The fitting service: HTTP API, job store, job processes, owners."""
