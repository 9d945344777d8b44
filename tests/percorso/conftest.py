"""A real Schema Registry for the session (Apicurio Registry, Confluent-compatible API)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from registry_server import (
    APICURIO_ARTIFACT,
    RegistryServer,
    RegistryUnavailable,
    apicurio_dist,
    apicurio_registry,
)


@pytest.fixture(scope="session")
def apicurio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """Apicurio Registry on a loopback port. In CI it never skips: a registry that cannot be
    installed or started fails the tests that need it. Elsewhere a failed install skips them,
    with the reason; a failed start is always an error."""
    try:
        dist = apicurio_dist()
    except RegistryUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot install {APICURIO_ARTIFACT}: {exc}", pytrace=False)
        pytest.skip(f"real Schema Registry not installable here ({APICURIO_ARTIFACT}): {exc}")
    with apicurio_registry(tmp_path_factory.mktemp("apicurio"), dist=dist) as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    funcargs = getattr(item, "funcargs", {})
    server = funcargs.get("apicurio") or getattr(funcargs.get("registry"), "server", None)
    if report.failed and isinstance(server, RegistryServer):
        report.sections.append(("Apicurio Registry log (tail)", server.log_tail(60)))
