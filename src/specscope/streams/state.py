"""Declared state for the mergeable accumulators (DESIGN: torchmetrics' ``add_state``), and their
reduction across processes, written once here rather than per probe.

A :class:`Stream` declares each piece of its state with :meth:`Stream.add_state` and how two copies
of it combine:

- ``"sum"``: added (counts; Gram blocks of parameter shards, whose inner products add up);
- ``"cat"``: concatenated in order (per-sample rows: the union of the samples);
- ``"custom"``: combined by the subclass's :meth:`Stream._merge_custom` (Chan's update of a mean
  and a centered scatter);
- ``"local"``: never combined (a rank's own shard of the rows).

:meth:`Stream.merge` folds another stream of the same class into this one; :meth:`Stream.sync`
gathers every rank's state (``torch.distributed.all_gather_object``, CPU copies) and folds them in
rank order, so every rank ends with the same state, the one a single process would hold after
seeing every rank's data in that order. Without an initialized process group, or with one
process, ``sync`` does nothing.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

REDUCTIONS = ("sum", "cat", "custom", "local")


def _cpu(x: Any) -> Any:
    """A CPU copy of a state value that holds only its own elements (a view of a larger tensor, such as one sample
    of a batch, is copied out, so sending it between processes sends its elements, not the whole batch)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.clone() if x.untyped_storage().nbytes() > x.numel() * x.element_size() else x
    if isinstance(x, list):
        return [_cpu(v) for v in x]
    return x


def _device(current: Any, default: torch.device) -> torch.device:
    """Where a state lives: a tensor's own device (a Gram kept on the CPU), else the stream's."""
    return current.device if isinstance(current, torch.Tensor) else default


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    return x


class Stream:
    """Base class of the accumulators: declared state (:meth:`add_state`), :meth:`reset`, :meth:`merge`,
    :meth:`state_dict` / :meth:`load_state_dict` and :meth:`sync` across processes. Subclasses set ``device`` and
    declare their state in ``__init__`` before calling :meth:`reset`."""

    device: torch.device = torch.device("cpu")

    def add_state(self, name: str, default: Any, reduce: str) -> None:
        """Declare the state ``name`` with its ``default`` (a tensor, list or number, copied on every reset) and how
        two copies combine (``reduce``, one of :data:`REDUCTIONS`; ValueError otherwise). Returns None."""
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, not {reduce!r}")
        if "_defaults" not in self.__dict__:
            self._defaults: dict[str, tuple[Any, str]] = {}
        self._defaults[name] = (default, reduce)

    def reset(self) -> None:
        """Every declared state back to a copy of its default. Returns None."""
        for name, (default, _) in self._defaults.items():
            setattr(self, name, default.clone() if isinstance(default, torch.Tensor) else copy.copy(default))

    def _merge_custom(self, other: "Stream") -> None:
        """Combine the ``"custom"`` states of ``other`` into this stream (subclasses that declare any). Returns
        None."""
        raise NotImplementedError(f"{type(self).__name__} declares custom state but no _merge_custom")

    def merge(self, other: "Stream") -> "Stream":
        """Fold ``other`` (the same class) into this stream by each state's declared reduction; returns ``self``.
        TypeError for another class."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        custom = False
        for name, (_, reduce) in self._defaults.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if reduce == "sum":
                setattr(self, name, mine + _to(theirs, _device(mine, self.device)))
            elif reduce == "cat":
                setattr(self, name, list(mine) + _to(list(theirs), self.device))
            elif reduce == "custom":
                custom = True
        if custom:
            self._merge_custom(other)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The declared states that combine (not ``"local"`` ones), as CPU copies: a dict by name."""
        return {name: _cpu(getattr(self, name)) for name, (_, r) in self._defaults.items() if r != "local"}

    def load_state_dict(self, state: dict[str, Any]) -> "Stream":
        """Set the declared states from ``state`` (from :meth:`state_dict`), each moved to where its current value
        lives (``device``, or the CPU for a Gram kept there); returns ``self``."""
        for name, value in state.items():
            setattr(self, name, _to(value, _device(getattr(self, name, None), self.device)))
        return self

    def folded(self, states: list[dict[str, Any]]) -> "Stream":
        """A new stream of this class holding ``states`` (:meth:`state_dict` of each rank, in rank order) folded in
        that order with :meth:`merge`, and this stream's own ``"local"`` states; this stream is left as it is."""
        out = copy.copy(self)
        out.reset()
        out.load_state_dict(states[0])
        for name, (_, reduce) in self._defaults.items():
            if reduce == "local":
                setattr(out, name, getattr(self, name))
        for st in states[1:]:
            other = copy.copy(self)
            other.reset()
            other.load_state_dict(st)
            out.merge(other)
        return out

    def exchanged(self, dist: Any, tag: str) -> "Stream":
        """Every rank's state folded in rank order (:meth:`folded`) through ``dist`` (a
        :class:`~specscope.streams.dist.Dist`: the monitor's group, its timeout and agreed failures); a collective,
        every rank calls it with the same ``tag``. Returns the new stream; this one is left as it is."""
        return self.folded(dist.exchange(self.state_dict(), tag))

    def sync(self, group: Any = None) -> "Stream":
        """Combine every rank's state of this stream (``group``: a process group, default the world): each rank
        gathers all states and folds them in rank order with :meth:`merge`, so all ranks end equal. A collective:
        every rank of the group must call it. Without an initialized process group or with one process it does
        nothing. Returns ``self``."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            return self
        states: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, self.state_dict(), group=group)
        self.__dict__.update(self.folded(states).__dict__)
        return self
