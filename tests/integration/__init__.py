"""Integration tests against the local Kubernetes control plane."""
