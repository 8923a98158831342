"""The simulated network: latency, jitter, loss, duplication, reordering and partitions.

Endpoints are node ids plus ``"etcd"``. Gossip travels as datagrams (``datagram``): each
copy may be lost, duplicated or delayed past later ones. RPCs (forwards, etcd calls) ride
TCP (``rpc``): never lost, but a lost segment costs a retransmission timeout, and a cut
link delivers nothing (the caller waits for its deadline). Partitions are directed cuts
between endpoint sets, so an asymmetric partition (A hears B, B does not hear A) is one
cut. All randomness comes from the generator handed in (derived from the run's seed).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from shardline.sim.scenario import NetworkSpec


class Network:
    """Link behaviour between endpoints (see the module docstring)."""

    def __init__(self, spec: NetworkSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self.base_s = spec.latency_ms / 1000.0
        self.jitter_s = spec.jitter_ms / 1000.0
        self.loss = spec.loss
        self._extra_loss = 0.0
        self.duplicate = spec.duplicate
        self.reorder = spec.reorder
        self.reorder_s = spec.reorder_ms / 1000.0
        self.retransmit_s = spec.retransmit_ms / 1000.0
        self.client_s = spec.client_latency_ms / 1000.0
        self._cuts: list[tuple[int, frozenset[str], frozenset[str]]] = []
        self._token = 0
        self.random = rng.random
        self.clean = True
        self._update()
        self.datagrams = 0
        self.dropped = 0

    # ------------------------------------------------------------------ partitions

    def cut(self, a: Iterable[str], b: Iterable[str], *, symmetric: bool = True) -> int:
        """Stop traffic from ``a`` to ``b`` (and back, when symmetric); returns a token."""
        self._token += 1
        sa, sb = frozenset(a), frozenset(b)
        self._cuts.append((self._token, sa, sb))
        if symmetric:
            self._cuts.append((self._token, sb, sa))
        self._update()
        return self._token

    def uncut(self, token: int) -> None:
        self._cuts = [c for c in self._cuts if c[0] != token]
        self._update()

    def heal(self) -> None:
        self._cuts.clear()
        self._update()

    @property
    def extra_loss(self) -> float:
        """Loss added on every link (a loss burst)."""
        return self._extra_loss

    @extra_loss.setter
    def extra_loss(self, value: float) -> None:
        self._extra_loss = value
        self._update()

    def _update(self) -> None:
        """``clean``: no cut, no loss: an RPC takes ``base_s + jitter_s * random()``, which the
        request path computes inline (the hot path of the simulator)."""
        self.clean = not self._cuts and not (self.loss + self._extra_loss)

    @property
    def partitioned(self) -> bool:
        return bool(self._cuts)

    def blocked(self, src: str, dst: str) -> bool:
        return any(src in a and dst in b for _, a, b in self._cuts)

    # ------------------------------------------------------------------ traffic

    def datagram(self, src: str, dst: str) -> tuple[float, ...]:
        """One-way delays of the copies of a datagram that arrive (empty: lost)."""
        self.datagrams += 1
        if self._cuts and self.blocked(src, dst):
            self.dropped += 1
            return ()
        rnd = self._rng.random
        loss = self.loss + self._extra_loss
        copies = 2 if self.duplicate and rnd() < self.duplicate else 1
        out: list[float] = []
        for _ in range(copies):
            if loss and rnd() < loss:
                self.dropped += 1
                continue
            delay = self.base_s + self.jitter_s * rnd()
            if self.reorder and rnd() < self.reorder:
                delay += self.reorder_s * rnd()
            out.append(delay)
        return tuple(out)

    def rpc(self, src: str, dst: str) -> float | None:
        """One-way delay of an RPC message (None: the link is cut, nothing arrives)."""
        if self._cuts and self.blocked(src, dst):
            return None
        rnd = self._rng.random
        delay = self.base_s + self.jitter_s * rnd()
        loss = self.loss + self._extra_loss
        if loss and rnd() < loss:
            delay += self.retransmit_s
        return delay

    def client(self) -> float:
        """Client <-> ingress one-way delay (clients sit outside every partition)."""
        return self.client_s + self.jitter_s * self._rng.random()
