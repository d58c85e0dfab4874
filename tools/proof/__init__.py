"""Proof of the claims (docs/claims.md): the switch-off table and its runner, the figures the suite
writes into docs/, and the Kubernetes manifests' check."""
