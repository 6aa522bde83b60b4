"""kubestep: durable, step-based background workflows on Kubernetes."""
