"""Reference counting and borrowing: when an object is freed, when a borrow ends.

An owned object lives while this process holds refs to it (``Entry.local``),
pins it (task arguments, objects containing it, generators) or lends it to
borrowers (``Entry.borrowers``). A borrowed object's owner is told when this
process borrows it (``AddBorrower``) and, ``BORROW_RELEASE_DELAY_S`` after the
last use here, that the borrow ended (``RemoveBorrower``): the delay covers a
ref that is passed on and comes straight back.
"""

from __future__ import annotations

from typing import Any

import zray.exceptions as exc  # (not "from zray import": that loads zray.api)
from zray import config
from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.base import OwnerBase
from zray.owner.state import FAILED, PENDING, READY, Entry


class RefsMixin(OwnerBase):
    """The Owner's reference-counting handlers (see zray/owner/core.py)."""

    # ------------------------------------------------------------ handlers
    def _on_ref_added(self, e_: ev.RefAdded) -> None:
        oid, owner = e_.oid, e_.owner
        e = self.objects.get(oid)
        if e is None:
            owned = self.is_mine(owner)
            e = Entry(owned, owner)
            self.objects[oid] = e
            if owner is not None and not owned:
                self.out.append(ins.AddBorrower(owner, oid))
        elif not e.owned and e.local == 0 and e.pins == 0 and e.owner is not None:
            # Re-borrow after we told (or are about to tell) the owner we were done.
            self.out.append(ins.AddBorrower(e.owner, oid))
        e.local += 1

    def _on_refs_dropped(self, e_: ev.RefsDropped) -> None:
        objs = self.objects
        for oid in e_.oids:
            e = objs.get(oid)
            if e is None:
                continue
            e.local -= 1
            self._maybe_release(oid, e)

    def _on_borrower_added(self, e_: ev.BorrowerAdded) -> None:
        e = self.objects.get(e_.oid)
        if e is not None and e.owned:
            e.add_borrower(e_.addr)

    def _on_borrower_removed(self, e_: ev.BorrowerRemoved) -> None:
        e = self.objects.get(e_.oid)
        if e is not None and e.owned:
            if e.borrowers:
                e.borrowers.discard(e_.addr)
            self._maybe_release(e_.oid, e)

    def _on_lend(self, e_: ev.Lend) -> None:
        for oid, owner in e_.contained:
            e = self.objects.get(oid)
            if e is not None and e.owned:
                e.add_borrower(e_.caller_addr)
            elif owner is not None:
                self.out.append(ins.AddBorrower(owner, oid, e_.caller))

    def _on_put(self, e_: ev.Put) -> None:
        e = Entry(True)
        e.contained = self._pin_refs(e_.nested) or None
        e.frames, e.node, e.size, e.state = e_.frames, e_.node, e_.size, READY
        self.objects[e_.oid] = e

    def _on_generator_taken(self, e_: ev.GeneratorTaken) -> None:
        e = self.objects.get(e_.oid)
        if e is not None:
            e.pins -= 1  # the ref just made holds it now

    # -------------------------------------------------------------- helpers
    def is_mine(self, owner: list[Any] | None) -> bool:
        return owner is None or owner[1] == self.ipc and owner[0] == self.node_id

    def entry_for(self, oid: bytes, owner: list[Any] | None) -> Entry:
        """The entry of a ref that reached us without registration (made one if needed)."""
        e = self.objects.get(oid)
        if e is None:
            e = Entry(False, owner)
            self.objects[oid] = e
        return e

    def _maybe_release(self, oid: bytes, e: Entry) -> None:
        """Free an owned object, or end a borrow, once nothing here holds it."""
        if e.local > 0 or e.pins > 0:
            return
        if e.owned:
            if e.borrowers:
                return
            self._free_owned(oid, e)
        else:
            del self.objects[oid]
            # The deadline is set by the next Tick: the owner has no clock of its own.
            self._borrow_releases.append([None, oid, e.owner])
            self._release_contained(e)

    def _free_owned(self, oid: bytes, e: Entry) -> None:
        del self.objects[oid]
        if e.state == READY and e.node is not None:
            self._free_copies(oid, e)
        self._release_contained(e)
        self._release_lineage(e)
        e.frames = None

    def _release_contained(self, e: Entry) -> None:
        if e.contained:
            for coid, _owner in e.contained:
                ce = self.objects.get(coid)
                if ce is not None:
                    ce.pins -= 1
                    self._maybe_release(coid, ce)
            e.contained = None

    def _pin_refs(self, refs: list[Any]) -> list[Any]:
        """Pin refs nested in a value this process keeps (args, put values)."""
        out = []
        for r in refs:
            e = self.objects.get(r._id)
            if e is None:
                continue
            e.pins += 1
            out.append((r._id, r._owner))
        return out

    def _hold_contained(self, entries: list[Any], contained: list[Any]) -> None:
        """Refs nested in returned values live as long as the value that holds them."""
        for i, coid, cowner in unpack_contained(contained):
            outer = entries[i] if i < len(entries) else None
            ce = self.objects.get(coid)
            if ce is None:
                # No AddBorrower: the worker that returned it lent it to us already.
                ce = self.objects[coid] = Entry(self.is_mine(cowner), cowner)
            if outer is None:
                self._maybe_release(coid, ce)  # nobody kept the outer value
                continue
            ce.pins += 1
            if outer.contained is None:
                outer.contained = []
            outer.contained.append((coid, cowner))

    def _flush_borrow_releases(self, now: float) -> None:
        dq = self._borrow_releases
        while dq:
            item = dq[0]
            if item[0] is None:
                # Dropped since the last Tick: due one delay from now (never early).
                for it in dq:
                    if it[0] is None:
                        it[0] = now + config.BORROW_RELEASE_DELAY_S
                break
            if item[0] > now:
                break
            dq.popleft()
            if item[1] in self.objects:
                continue  # borrowed again meanwhile
            self.out.append(ins.RemoveBorrower(item[2], item[1]))

    # ------------------------------------------------------- object values
    def _ensure_fetch(self, oid: bytes, e: Entry) -> None:
        """Ask a borrowed object's owner for its value or location (once)."""
        if e.owned or e.fetching or e.state != PENDING:
            return
        e.fetching = True
        self.out.append(ins.FetchObject(oid, e))

    def _on_fetch(self, e_: ev.Fetch) -> None:
        e = self.objects.get(e_.oid)
        if e is not None:
            self._ensure_fetch(e_.oid, e)

    def _on_object_value(self, e_: ev.ObjectValue) -> None:
        e = self.objects.get(e_.oid)
        if e is None or e.state != PENDING:
            return
        if e_.frames:
            e.frames = e_.frames
        else:
            e.node, e.size = e_.node, e_.size
        e.is_error = e_.is_error
        e.state = FAILED if e.is_error else READY
        self._on_ready(e_.oid, e)

    def _on_get_object(self, e_: ev.GetObject) -> None:
        oid = e_.oid
        e = self.objects.get(oid)
        if e is None or not e.owned:
            self.out.append(ins.SendValue(e_.ra, oid, None, exc.ReferenceCountingAssertionError(
                oid.hex(), self.me_str)))
            return
        if e.state == PENDING:
            if e.waiters is None:
                e.waiters = []
            e.waiters.append(e_.ra)
            return
        self.out.append(ins.SendValue(e_.ra, oid, e))

    def _on_objects_failed(self, e_: ev.ObjectsFailed) -> None:
        for oid, err in e_.items:
            e = self.objects.get(oid)
            if e is not None and e.state == PENDING:
                self._set_failed(oid, e, err)

    def _set_failed(self, oid: bytes, e: Entry, err: BaseException) -> None:
        e.frames = self.encode_error(err)
        e.is_error = True
        e.state = FAILED
        self._on_ready(oid, e)

    def _on_ready(self, oid: bytes, e: Entry) -> None:
        """An object became ready or failed: wake dependents, borrowers and the shell."""
        self._ready_oids.append(oid)
        self._ready_entries.append(e)
        if e.dependents:
            ts, e.dependents = e.dependents, None
            for t in ts:
                self._dep_ready(t)
        if e.waiters:
            ws, e.waiters = e.waiters, None
            for ra in ws:
                self.out.append(ins.SendValue(ra, oid, e))
        if e.loc_waiters:
            ls, e.loc_waiters = e.loc_waiters, None
            for q in ls:
                self._on_get_locations(q)


def pack_contained(items: list[Any]) -> list[Any]:
    """(return index, oid, owner) triples -> [[owner, [[index, oid], ...]], ...].

    Grouped by owner so that a value holding 10,000 refs of one owner does not
    repeat the owner's address 10,000 times in the header.
    """
    groups: dict[Any, Any] = {}
    for i, oid, owner in items:
        key = tuple(owner) if owner else None
        g = groups.get(key)
        if g is None:
            g = groups[key] = [owner, []]
        g[1].append([i, oid])
    return list(groups.values())


def unpack_contained(wire: list[Any]) -> list[Any]:
    return [(i, oid, owner) for owner, pairs in wire for i, oid in pairs]
