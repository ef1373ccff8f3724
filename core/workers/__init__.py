"""Connection workers: more than one core (docs/architecture.md, "Connection workers")."""
