"""infra stage."""
