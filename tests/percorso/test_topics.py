from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka.admin import ConfigResource, NewTopic

from percorso import clients
from percorso.config import Settings
from percorso.topics import TopicConflictError, ensure_topics, percorso_topics


def test_declaration_covers_the_contract() -> None:
    specs = {s.name: s for s in percorso_topics(Settings())}
    assert set(specs) == {
        "touchpoints",
        "percorso.transitions",
        "percorso.touchpoints.dlq",
        "percorso.conversions",
        *(f"percorso.actions.{c}" for c in ("email", "sms", "push", "agent", "web", "app")),
    }
    assert specs["touchpoints"].value_subject == "io.percorso.Touchpoint"
    assert specs["percorso.touchpoints.dlq"].value_subject is None
    assert specs["percorso.actions.sms"].value_subject == "io.percorso.Action"
    assert specs["percorso.conversions"].value_subject == "io.percorso.Conversion"
    assert all(s.config["cleanup.policy"] == "delete" for s in specs.values())


def test_create_is_idempotent(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    admin = clients.admin(settings)
    specs = percorso_topics(settings)
    first = ensure_topics(admin, specs)
    assert first.created == sorted(s.name for s in specs)
    second = ensure_topics(admin, specs)
    assert second.created == [] and second.existing == sorted(s.name for s in specs)
    md = admin.list_topics(timeout=10)
    assert len(md.topics[settings.topics.touchpoints].partitions) == settings.partitions
    config = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, settings.topics.touchpoints)]
    )
    values = {k: v.value for k, v in next(iter(config.values())).result().items()}
    assert values["cleanup.policy"] == "delete"
    assert values["retention.ms"] == str(7 * 24 * 3600 * 1000)


def test_conflicting_existing_topics_are_reported(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    admin = clients.admin(settings)
    futures = admin.create_topics(
        [
            NewTopic(settings.topics.touchpoints, num_partitions=2, replication_factor=1),
            NewTopic(
                settings.topics.transitions,
                num_partitions=4,
                replication_factor=1,
                config={"cleanup.policy": "compact"},
            ),
        ]
    )
    for f in futures.values():
        f.result()
    with pytest.raises(TopicConflictError) as info:
        ensure_topics(admin, percorso_topics(settings))
    text = str(info.value)
    assert f"{settings.topics.touchpoints}: has 2 partitions, expected 4" in text
    assert (
        f"{settings.topics.transitions}: cleanup.policy=compact, expected "
        f"cleanup.policy=delete" in text
    )
    assert len(info.value.conflicts) == 2
