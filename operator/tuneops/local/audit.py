"""The API server's audit log: which requests it served, counted by verb, resource and user (tests and benches)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One line per request: watches also log ResponseStarted, which AuditLog de-duplicates by auditID.
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


@dataclass(frozen=True)
class AuditEvent:
    """One API request as recorded by the apiserver's audit log (Metadata level)."""

    audit_id: str
    verb: str
    user: str
    groups: tuple[str, ...]
    resource: str
    subresource: str
    api_group: str
    namespace: str
    name: str
    code: int
    user_agent: str
    uri: str

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AuditEvent:
        ref = raw.get("objectRef") or {}
        user = raw.get("user") or {}
        status = raw.get("responseStatus") or {}
        return cls(
            audit_id=str(raw.get("auditID", "")),
            verb=str(raw.get("verb", "")),
            user=str(user.get("username", "")),
            groups=tuple(user.get("groups") or ()),
            resource=str(ref.get("resource", "")),
            subresource=str(ref.get("subresource", "")),
            api_group=str(ref.get("apiGroup", "")),
            namespace=str(ref.get("namespace", "")),
            name=str(ref.get("name", "")),
            code=int(status.get("code", 0)),
            user_agent=str(raw.get("userAgent", "")),
            uri=str(raw.get("requestURI", "")),
        )


@dataclass
class AuditLog:
    """Reads the apiserver's JSON-lines audit log; `mark()` and `since=` scope a count to a time window."""

    path: Path

    def mark(self) -> int:
        """An offset into the log: events after this call are those with `since=` this value."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def events(self, since: int = 0) -> list[AuditEvent]:
        """Each request once (watches log twice: when the stream starts and when it ends)."""
        seen: set[str] = set()
        out: list[AuditEvent] = []
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return out
        for line in data.splitlines():
            # The apiserver may be mid-write on the last line.
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            event = AuditEvent.from_json(raw)
            if event.audit_id in seen:
                continue
            seen.add(event.audit_id)
            out.append(event)
        return out

    def select(
        self,
        since: int = 0,
        *,
        verbs: Iterable[str] | None = None,
        resource: str | None = None,
        user: str | None = None,
        namespace: str | None = None,
        writes_only: bool = False,
    ) -> list[AuditEvent]:
        verb_set = frozenset(verbs) if verbs is not None else None
        return [
            e
            for e in self.events(since)
            if (verb_set is None or e.verb in verb_set)
            and (resource is None or e.resource == resource)
            and (user is None or e.user == user)
            and (namespace is None or e.namespace == namespace)
            and (not writes_only or e.is_write)
        ]

    def count(
        self,
        since: int = 0,
        *,
        by: Sequence[str] = ("verb", "resource"),
        verbs: Iterable[str] | None = None,
        resource: str | None = None,
        user: str | None = None,
        namespace: str | None = None,
        writes_only: bool = False,
    ) -> Counter[tuple[str, ...]]:
        """Requests grouped by the named AuditEvent fields, e.g. `by=("user", "verb", "resource")`."""
        selected = self.select(
            since, verbs=verbs, resource=resource, user=user, namespace=namespace, writes_only=writes_only
        )
        return Counter(tuple(str(getattr(e, key)) for key in by) for e in selected)
