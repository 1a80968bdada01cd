"""Offline work: synthetic data, training, batch scoring."""
