"""Feast: opening the feature store, applying and materializing it, reading it online."""
