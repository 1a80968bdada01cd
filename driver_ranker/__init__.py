"""driver-ranker: rank drivers for a trip with Feast online features and an MLflow champion."""
