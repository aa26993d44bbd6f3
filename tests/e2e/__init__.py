"""End-to-end tier: whole stories on real components (MLflow server, Docker, registry, git)."""
