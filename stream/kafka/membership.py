"""Who owns which partition: faust's partition -> worker URL map, for request routing.

Each worker advertises its HTTP URL (``PROFILES_ADVERTISED_URL``) as faust's canonical URL; the
group leader spreads the partition -> URL map to every member with each assignment, so routing
needs no extra service.  ``stream.serve.routing`` asks this object, never faust itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FaustMembership"]


class FaustMembership:
    """The owner of a key's partition of ``topic`` and the other members, from faust's
    assignor."""

    def __init__(self, app: Any, topic: str, self_url: str) -> None:
        self.app = app  # faust.App
        self.topic = topic
        self.self_url = self_url.rstrip("/")

    def owner(self, key: str) -> str | None:
        """URL of the worker owning ``key``'s partition (None when unknown or this worker)."""
        try:
            url = str(self.app.assignor.external_key_store(self.topic, key.encode())).rstrip("/")
        except (KeyError, AttributeError):
            return None
        return None if url == self.self_url else url

    def peers(self) -> list[str]:
        """URLs of the other members."""
        try:
            urls = self.app.assignor.external_topics_metadata().keys()
        except AttributeError:
            return []
        return sorted({u.rstrip("/") for u in map(str, urls)} - {self.self_url})
