"""The request path: what a BentoML worker runs (service.py wires it into BentoML)."""
