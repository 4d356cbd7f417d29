"""Reads from informers' stores instead of the API server.

`CachedKube` is a `Kube` whose reads of watched kinds come from memory (the informer of that kind and
namespace, once it has listed) and whose writes go to the server as before, their answers kept in the store
so that the next read sees them. Kinds it does not watch (Secrets, Events), and namespaces outside the
watched ones, are read from the server as before.

What a change wakes is not recorded here from reads: it is declared per kind in tuneops.watches (For, Owns,
Watches), which reads the owners and their links from this cache.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tuneops import labels
from tuneops.kube import types as kt
from tuneops.kube.client import Kube, NotFound, ResourceType, type_of
from tuneops.kube.informer import Informer, Obj, key_of, matches, project


class CachedKube(Kube):
    """A Kube that reads watched kinds from informers (see the module's docstring)."""

    def __init__(self, base: Kube) -> None:
        super().__init__(base.api, retry=base.retry, user_agent=str(base.api.user_agent))
        self.base = base
        self.informers: dict[tuple[ResourceType, str | None], Informer] = {}
        # Events are advisory and written after the status they describe: off the reconcile's thread, so a
        # burst of transitions is not slowed by their round trips.
        self._events = ThreadPoolExecutor(max_workers=2, thread_name_prefix="events")

    def add(self, informer: Informer) -> None:
        """Read `informer`'s kind from it. It keeps the fields the reconcilers read (`project`); an informer of
        children (selected by the operator's label, which anyone can set) also keeps only the objects whose
        controller is one of the operator's own (`owned`), and lists once the owners' informers have."""
        self.informers[(informer.rtype, informer.namespace)] = informer
        informer.projection = project
        if informer.selector.get(labels.MANAGED_BY) == labels.MANAGED_BY_VALUE:
            rtype = informer.rtype
            informer.keep = lambda obj: self.owned(rtype, obj)
            informer.depends = lambda: self._owners_of(rtype, informer.namespace)
        if self._is_owner(informer.rtype):
            informer.store.on_new_uid = self._owner_arrived

    # ----- who owns what: only children of the operator's own resources are kept ----------------------

    @staticmethod
    def _is_owner(rtype: ResourceType) -> bool:
        return rtype in kt.CUSTOM.values() or rtype in (kt.JOB, kt.DEPLOYMENT, kt.LWS)

    def _owners_of(self, rtype: ResourceType, namespace: str | None) -> list[Informer]:
        """The informers `owned` looks up for a child of `rtype`."""
        kinds = set(kt.CUSTOM.values())
        if rtype == kt.POD:
            kinds |= {kt.JOB, kt.DEPLOYMENT, kt.LWS}
        return [i for (t, ns), i in self.informers.items() if t in kinds and ns in (namespace, None)]

    def _store_of(self, rtype: ResourceType, namespace: str) -> Informer | None:
        return self.informers.get((rtype, namespace)) or self.informers.get((rtype, None))

    def owned(self, rtype: ResourceType, obj: Obj) -> bool:
        """Whether `obj` (a child of kind `rtype`) is controlled by a live resource of the operator: its
        controller ownerReference names, by uid, a tuneops resource held (a Pod's: a Job held, or the
        ReplicaSet of a Deployment held, or a StatefulSet of a LeaderWorkerSet held)."""
        meta = obj.get("metadata") or {}
        ref = next((r for r in meta.get("ownerReferences") or [] if isinstance(r, dict) and r.get("controller") is True), None)  # fmt: skip
        if ref is None:
            return False
        uid, namespace = str(ref.get("uid") or ""), key_of(obj)[0]
        if rtype != kt.POD:
            return any(self._holds(t, namespace, uid) for t in kt.CUSTOM.values())
        kind, name = ref.get("kind"), str(ref.get("name") or "")
        if kind == "Job":
            return self._holds(kt.JOB, namespace, uid)
        if kind == "ReplicaSet":  # <deployment>-<pod-template-hash>; ReplicaSets are not watched
            suffix = "-" + str((meta.get("labels") or {}).get("pod-template-hash") or "")
            found = self._store_of(kt.DEPLOYMENT, namespace)
            return (
                suffix != "-"
                and name.endswith(suffix)
                and found is not None
                and found.store.peek(namespace, name[: -len(suffix)]) is not None
            )
        if kind == "StatefulSet":  # a LeaderWorkerSet's: <lws> (leaders) or <lws>-<group> (workers)
            found = self._store_of(kt.LWS, namespace)
            return found is not None and any(
                name == lws or name.startswith(lws + "-")
                for ns, lws in found.store.held_keys()
                if ns == namespace
            )
        return False

    def _holds(self, rtype: ResourceType, namespace: str, uid: str) -> bool:
        found = self._store_of(rtype, namespace)
        return found is not None and found.store.has_uid(uid)

    def _owner_arrived(self, uid: str) -> None:
        """An owner appeared (a uid new to its store, however it came): children seen before it are read
        again."""
        for child in list(self.informers.values()):
            if child.keep is not None:
                child.adopt(uid)

    def informer(self, rtype: ResourceType, namespace: str | None) -> Informer | None:
        """The synced informer that holds `rtype` in `namespace`, if reads of it may come from memory."""
        found = self.informers.get((rtype, namespace)) or self.informers.get((rtype, None))
        if found is None or not found.synced or found.refused == 403:
            return None  # not watched, not listed yet, or not allowed to list: ask the server
        return found

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        return self.base._call(*args, **kwargs)  # every request goes through the client this one wraps

    def _send(self, *args: Any, **kwargs: Any) -> Any:
        return self.base._send(*args, **kwargs)

    # ----- reads ------------------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.informer(rtype, namespace)
        if found is None:
            return super().get(rtype, namespace, name)
        return found.store.get(namespace or "", name)

    def list(
        self, rtype: ResourceType, namespace: str | None, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        # The informer holds only what carries its own selector (the operator's label, which everything it
        # makes carries): a list by any selector is answered from those objects.
        found = self.informer(rtype, namespace)
        if found is None:
            return super().list(rtype, namespace, selector)
        if found.refused == 404:
            raise NotFound("LIST", rtype.collection(namespace), "not served (its CRD is not installed)")
        return found.store.list(namespace, selector)

    # ----- writes: Kube hands every answer here, the newest copy -------------------------------------

    def _written(self, obj: dict[str, Any]) -> None:
        if not isinstance(obj, dict) or not obj.get("metadata"):
            return
        try:
            rtype = type_of(obj)
        except KeyError:
            return  # a subresource's answer (a Pod's binding), not a stored object
        found = self.informers.get((rtype, key_of(obj)[0])) or self.informers.get((rtype, None))
        if found is None:
            return
        if found.refused == 404:
            found.rediscover()  # the server took one: its CRD is installed now
        elif found.synced and matches(obj, found.selector):
            found.written(
                obj
            )  # held now, and a change the callbacks see now (its watch event is then no news)

    def event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, now: dt.datetime | None = None
    ) -> None:
        stamp = now or dt.datetime.now(dt.UTC)  # the time of the transition, not of the write
        self._events.submit(super().event, involved, type_, reason, message, stamp)

    def _deleted(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        found = self.informers.get((rtype, namespace)) or self.informers.get((rtype, None))
        if found is not None:
            # Gone or going: the watch brings it back if it lingers (finalizers).
            found.deleted(namespace or "", name)
