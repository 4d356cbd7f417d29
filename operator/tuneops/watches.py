"""What wakes a resource: the watches declared per tuneops kind, as controller-runtime's For, Owns and Watches.

`TABLE` says, per kind:
  - For: the resource's own changes that its reconcile must see (`asks_for_work`): created; its generation
    (spec), labels, annotations or uid changed; deleted or being deleted. Its status alone (mostly the operator's
    own writes) does not wake it.
  - Owns: the child kinds it makes. A change to a child wakes the resource its controller ownerReference names,
    checked by uid against the resource held in memory; a Pod wakes the owner of the Job, Deployment (through
    the ReplicaSet `<deployment>-<pod-template-hash>`) or LeaderWorkerSet (through its StatefulSets) it belongs
    to, each checked the same way. A reference to a uid the operator does not hold wakes nothing.
  - Watches: the tuneops resources its spec references (`validation.references`), by kind, namespace and name,
    whether or not they exist yet. Any change to one (a source becoming Ready, a new digest, its deletion) wakes
    the resources that reference it. References the operator refuses to follow (another namespace while
    cross-namespace references are off, the resource itself) are not watched: the resource stays InvalidSpec
    until its spec changes.

`Watches` applies the table: `owners` for a child's change, `users` for a tuneops resource's change, with an
index of references kept from the specs as they arrive (`observe`), so a resource that references a source
before it exists is woken when it appears. docs/reliability.md ("What wakes a resource") carries `markdown()`;
tests/unit/test_watches.py holds the two together.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuneops.api import KINDS, SpecError
from tuneops.config import OperatorConfig
from tuneops.kube import types as kt
from tuneops.kube.cache import CachedKube
from tuneops.kube.client import ResourceType
from tuneops.kube.informer import Obj, Store, key_of
from tuneops.validation.references import check_reference, references

# A tuneops resource: (kind, namespace, name), the work queue's key.
Key = tuple[str, str, str]

# For: the metadata fields whose change asks for a reconcile, as the docs name them (generation moves with the
# spec; annotations carry tuneops.io/refresh; uid: deleted and made again under the name).
FOR = {
    "generation": "spec (`generation`)",
    "labels": "`labels`",
    "annotations": "`annotations`",
    "deletionTimestamp": "`deletionTimestamp`",
    "uid": "`uid`",
}
FOR_FIELDS = tuple(FOR)


@dataclass(frozen=True)
class Owned:
    """A child kind; `via` is the owned workload kind a Pod belongs to (None: the child is owned directly)."""

    kind: str
    via: str | None = None

    def __str__(self) -> str:
        return self.kind if self.via is None else f"{self.kind} of its {self.via}"


@dataclass(frozen=True)
class Referenced:
    """A tuneops kind the spec references, and the fields that hold the reference."""

    kind: str
    fields: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.kind} ({', '.join(f'`{f}`' for f in self.fields)})"


@dataclass(frozen=True)
class KindWatches:
    """One row of the table: what wakes a resource of `kind` besides its own changes (For)."""

    kind: str
    owns: tuple[Owned, ...]
    watches: tuple[Referenced, ...] = ()
    # kinds that attach themselves to a resource of this kind by naming it in their spec (a LoRAAdapter's
    # serviceRef): any change to one of them, its deletion included, wakes the resource it names (and the one it
    # named before)
    attached: tuple[str, ...] = ()


_JOBS = (Owned("Job"), Owned("Pod", via="Job"))

TABLE: dict[str, KindWatches] = {
    w.kind: w
    for w in (
        KindWatches(
            "FineTunedModel",
            owns=_JOBS,
            watches=(Referenced("InferenceService", ("spec.benchmark.serviceRef",)),),
        ),
        KindWatches(
            "QuantizationJob",
            owns=_JOBS,
            watches=(Referenced("FineTunedModel", ("spec.source.fineTunedModelRef",)),),
        ),
        KindWatches(
            "InferenceService",
            owns=(
                Owned("Deployment"),
                Owned("LeaderWorkerSet"),
                Owned("Service"),
                Owned("ConfigMap"),
                Owned("PodDisruptionBudget"),
                Owned("NetworkPolicy"),
                Owned("HorizontalPodAutoscaler"),
                Owned("ScaledObject"),
                Owned("InferencePool"),
                Owned("HTTPRoute"),
                Owned("Pod", via="Deployment"),
                Owned("Pod", via="LeaderWorkerSet"),
            ),
            watches=(
                Referenced(
                    "FineTunedModel",
                    ("spec.model.fineTunedModelRef", "spec.lora.adapters[].fineTunedModelRef"),
                ),
                Referenced("QuantizationJob", ("spec.model.quantizationJobRef",)),
            ),
            attached=("LoRAAdapter",),
        ),
        KindWatches(
            "LoRAAdapter",
            owns=(),
            watches=(Referenced("InferenceService", ("spec.serviceRef",)),),
        ),
    )
}


def asks_for_work(before: Obj | None, obj: Obj) -> bool:
    """For: a change to a tuneops resource that its reconcile must see. Status alone (mostly our own writes) is
    not: the resync and the resources that reference it (Watches) take care of that."""
    if before is None:
        return True
    old, new = before.get("metadata") or {}, obj.get("metadata") or {}
    return any(old.get(f) != new.get(f) for f in FOR_FIELDS)


def markdown() -> str:
    """The table as docs/reliability.md shows it."""
    own = f"created or deleted; a change to its {', '.join(FOR.values())}; not its status alone"
    rows = [
        "| kind | For: its own changes | Owns: a change to a child wakes the owner its controller ownerReference "
        "names (uid checked) | Watches: a change to a resource its spec references (by name, any namespace it "
        "may reference, before it exists too) |",
        "|---|---|---|---|",
    ]
    for w in TABLE.values():
        owns = ", ".join(str(o) for o in w.owns) or "nothing"
        attached = [f"a {k} that names it (any change, its deletion too)" for k in w.attached]
        watches = "; ".join([*(str(r) for r in w.watches), *attached]) or "nothing"
        rows.append(f"| {w.kind} | {own} | {owns} | {watches} |")
    return "\n".join(rows) + "\n"


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None


class Watches:
    """The table applied to the objects `cache` holds, and the index of references kept from the specs."""

    def __init__(self, cache: CachedKube, config: OperatorConfig) -> None:
        self.cache = cache
        self.config = config
        self._lock = threading.Lock()
        # Per resource: the (uid, generation) its references were read at, and the resources they name.
        self._refs: dict[Key, tuple[tuple[Any, Any], frozenset[Key]]] = {}
        self._users: dict[Key, set[Key]] = {}

    # ----- Owns ----------------------------------------------------------------------------------------

    def owners(self, rtype: ResourceType, *objs: Obj | None) -> set[Key]:
        """The resources a change to child `objs` (an object's new and old copies) wakes: at most one each."""
        out: set[Key] = set()
        for obj in objs:
            if obj is not None and (owner := self.owner(rtype, obj)) is not None:
                out.add(owner)
        return out

    def owner(self, rtype: ResourceType, obj: Obj) -> Key | None:
        """The tuneops resource held that controls child `obj` of kind `rtype`, if its kind owns such a child."""
        via: str | None = None
        if rtype == kt.POD:
            workload = self._workload_of(obj)
            if workload is None:
                return None
            via, obj = workload
        ref = controller_ref(obj)
        if ref is None:
            return None
        kind, namespace = str(ref.get("kind") or ""), key_of(obj)[0]
        row = TABLE.get(kind)
        if row is None or Owned(rtype.kind, via) not in row.owns or kind not in kt.CUSTOM:
            return None
        held = self._held(kt.CUSTOM[kind], namespace, ref)
        return None if held is None else (kind, *key_of(held))

    def _store_of(self, rtype: ResourceType, namespace: str) -> Store | None:
        found = self.cache.informers.get((rtype, namespace)) or self.cache.informers.get((rtype, None))
        return None if found is None else found.store

    def _held(self, rtype: ResourceType, namespace: str, ref: Mapping[str, Any]) -> Obj | None:
        """The object `ref` names, when one is held under its name with its uid."""
        store, uid = self._store_of(rtype, namespace), str(ref.get("uid") or "")
        held = None if store is None or not uid else store.peek(namespace, str(ref.get("name") or ""))
        if held is None or str((held.get("metadata") or {}).get("uid") or "") != uid:
            return None
        return held

    def _workload_of(self, pod: Obj) -> tuple[str, Obj] | None:
        """The Job, Deployment or LeaderWorkerSet held that a Pod belongs to, by its controller ownerReference (the
        links the cache's owner filter follows: a Job by uid; a ReplicaSet `<deployment>-<pod-template-hash>`; a
        StatefulSet `<lws>` or `<lws>-<group>`)."""
        ref = controller_ref(pod)
        if ref is None:
            return None
        meta = pod.get("metadata") or {}
        kind, name, namespace = ref.get("kind"), str(ref.get("name") or ""), key_of(pod)[0]
        if kind == "Job":
            job = self._held(kt.JOB, namespace, ref)
            return None if job is None else ("Job", job)
        if kind == "ReplicaSet":  # ReplicaSets are not watched: their name links to the Deployment
            suffix = "-" + str((meta.get("labels") or {}).get("pod-template-hash") or "")
            store = self._store_of(kt.DEPLOYMENT, namespace)
            if suffix == "-" or not name.endswith(suffix) or store is None:
                return None
            found = store.peek(namespace, name[: -len(suffix)])
            return None if found is None else ("Deployment", found)
        if kind == "StatefulSet":
            store = self._store_of(kt.LWS, namespace)
            if store is None:
                return None
            names = [
                n
                for ns, n in store.held_keys()
                if ns == namespace and (name == n or name.startswith(n + "-"))
            ]
            found = store.peek(namespace, max(names, key=len)) if names else None
            return None if found is None else ("LeaderWorkerSet", found)
        return None

    # ----- Watches -------------------------------------------------------------------------------------

    def observe(self, kind: str, type_: str, obj: Obj) -> None:
        """A tuneops resource arrived, changed or went: the references of its spec are read again when its spec
        (generation) or uid changed; a deleted resource, or one being deleted, watches nothing."""
        meta = obj.get("metadata") or {}
        key: Key = (kind, *key_of(obj))
        if type_ == "DELETED" or meta.get("deletionTimestamp"):
            self.forget(key)
            return
        stamp = (meta.get("uid"), meta.get("generation"))
        with self._lock:
            held = self._refs.get(key)
            if held is not None and held[0] == stamp:
                return
        targets = self._targets(kind, obj)
        with self._lock:
            self._forget(key)
            self._refs[key] = (stamp, targets)
            for target in targets:
                self._users.setdefault(target, set()).add(key)

    def _targets(self, kind: str, obj: Obj) -> frozenset[Key]:
        row, info = TABLE.get(kind), KINDS.get(kind)
        if row is None or not row.watches or info is None:
            return frozenset()
        try:
            spec = info.parse_spec(obj)
        except SpecError:
            return frozenset()  # InvalidSpec: not retried until the spec changes
        namespace, name = key_of(obj)
        kinds = {r.kind for r in row.watches}
        return frozenset(
            (ref.kind, ref.ref.namespace or namespace, ref.ref.name)
            for ref in references(spec)
            if ref.kind in kinds
            and check_reference(ref, kind=kind, namespace=namespace, name=name, config=self.config) is None
        )

    def attached_to(self, kind: str, *objs: Obj | None) -> set[Key]:
        """The resources a change to `objs` (new and old copies of a resource of `kind`) attaches to: read from
        the raw spec, so a deletion or a malformed spec still wakes them."""
        parents = [w.kind for w in TABLE.values() if kind in w.attached]
        out: set[Key] = set()
        for obj in objs:
            if obj is None or not parents:
                continue
            ref = (obj.get("spec") or {}).get("serviceRef")
            if isinstance(ref, dict) and isinstance(ref.get("name"), str):
                namespace = ref.get("namespace") or key_of(obj)[0]
                out |= {(parent, str(namespace), ref["name"]) for parent in parents}
        return out

    def users(self, kind: str, obj: Obj) -> set[Key]:
        """The resources whose spec references tuneops resource `obj` of `kind`."""
        with self._lock:
            return set(self._users.get((kind, *key_of(obj)), ()))

    def references_of(self, key: Key) -> frozenset[Key]:
        with self._lock:
            held = self._refs.get(key)
            return frozenset() if held is None else held[1]

    def forget(self, key: Key) -> None:
        with self._lock:
            self._forget(key)

    def _forget(self, key: Key) -> None:
        _, targets = self._refs.pop(key, (None, frozenset()))
        for target in targets:
            users = self._users.get(target)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[target]

    def __len__(self) -> int:
        with self._lock:
            return len(self._refs)
