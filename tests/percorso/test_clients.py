"""Client defaults that other parts rely on, against the real broker."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from agents.app import partition_for
from percorso import clients
from percorso.config import Settings


def test_keyed_records_land_where_the_repartition_topic_puts_their_customer(
    settings_factory: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """Percorso's producers partition like the Java client (murmur2), as the worker does for
    touchpoints it re-keys: otherwise one customer's state would be split over partitions."""
    settings = settings_factory()
    topic = unique("keyed")
    partitions = 6
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result()
    producer = clients.producer(settings)
    customers = [f"customer-{n}" for n in range(60)]
    for customer in customers:
        producer.produce(topic, key=customer.encode(), value=b"x")
    assert producer.flush(30) == 0
    consumer = Consumer({**settings.kafka_config(), "group.id": unique("reader")})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: dict[str, int] = {}
    try:
        for _ in range(60):
            for message in consumer.consume(100, timeout=0.5):
                if message.error() is None:
                    seen[message.key().decode()] = message.partition()
            if len(seen) == len(customers):
                break
    finally:
        consumer.close()
    assert seen == {c: partition_for(c, partitions) for c in customers}
    assert len(set(seen.values())) > 1  # spread over partitions, not all on one
