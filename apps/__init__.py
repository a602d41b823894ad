"""apps stage."""
