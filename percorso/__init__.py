"""Percorso: Kafka-native, real-time customer-journey orchestration."""

__version__ = "0.1.0"
