"""Headless Chromium for the journey-page test: the rendered DOM and a screenshot.

Debian's ``chromium`` package (``.ci/run`` and ``make test`` install it when they can). The DOM
is read with ``--dump-dom`` after ``--virtual-time-budget`` has let the page's scripts fetch
and render; the result is parsed into a small tree the test queries by attribute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


def chromium() -> str:
    """The browser, or a skip outside CI (CI installs Debian's chromium package)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("chromium not installed (apt-get install chromium); CI runs this")


def _run(args: list[str], profile: Path) -> str:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # as root in a container there is no user namespace to sandbox with
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"chromium failed ({out.returncode}): {out.stderr[-2000:]}"
    return out.stdout


def dump_dom(url: str, profile: Path, budget_ms: int = 6000) -> Element:
    html = _run([f"--virtual-time-budget={budget_ms}", "--dump-dom", url], profile)
    return parse(html)


def screenshot(url: str, path: Path, profile: Path, budget_ms: int = 6000) -> Path:
    _run(
        [
            f"--virtual-time-budget={budget_ms}",
            "--hide-scrollbars",
            f"--screenshot={path}",
            "--window-size=1366,2000",
            url,
        ],
        profile,
    )
    assert path.exists() and path.stat().st_size > 10_000, "no screenshot written"
    return path


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def text(self) -> str:
        parts: list[str] = []

        def walk(e: Element) -> None:
            parts.extend(e.texts)
            for c in e.children:
                walk(c)

        walk(self)
        return " ".join(" ".join(parts).split())

    def all(self, **attrs: str) -> list[Element]:
        """Every descendant whose attributes include ``attrs`` (``data_stage`` is data-stage,
        ``tag`` the element name)."""
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        found: list[Element] = []

        def walk(e: Element) -> None:
            for c in e.children:
                have = {**c.attrs, "tag": c.tag}
                if all(have.get(k) == v for k, v in want.items()):
                    found.append(c)
                walk(c)

        walk(self)
        return found

    def one(self, **attrs: str) -> Element:
        found = self.all(**attrs)
        assert len(found) == 1, f"expected one element with {attrs}, found {len(found)}"
        return found[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        e = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(e)
        if tag not in VOID:
            self.stack.append(e)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].texts.append(data)


def parse(html: str) -> Element:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root
