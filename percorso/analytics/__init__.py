"""Journey analytics as a stream: ``percorso analytics`` reads the transitions, action and
dead-letter topics, keeps funnel, path, time-in-stage, exit and action figures per journey in
RocksDB, and serves them as JSON and as a journey page (docs/analytics.md)."""

from percorso.analytics.aggregator import Aggregator
from percorso.analytics.figures import DeadLetters, Histogram, JourneyFigures
from percorso.analytics.store import AnalyticsStore

__all__ = ["Aggregator", "AnalyticsStore", "DeadLetters", "Histogram", "JourneyFigures"]
