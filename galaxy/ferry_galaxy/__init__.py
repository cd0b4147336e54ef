"""ferry for Galaxy: a Kubernetes job runner that stages each job's files through S3 (see README.md)."""

__version__ = "0.1.0"
