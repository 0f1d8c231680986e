"""The documents stages exchange: manifests, the feature store, gate checks on metric documents."""
