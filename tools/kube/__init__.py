"""A one-machine Kubernetes node built from source and Debian's packages (docs/kubernetes.md)."""
