"""shardline: the deterministic discrete-event chaos simulator (``shardline sim``).

It drives the project's real pure cores on a virtual clock: every simulated node runs
``shardline.membership.swim.Swim``, builds its view with ``shardline.membership.view.build_view``
from a ``shardline.membership.snapshot.ClusterSnapshot`` fed by an etcd double, its ring with
``shardline.router.handoff.ring_of``, places models with ``shardline.router.handoff.step`` and
routes with ``shardline.router.rules.evaluate``, ``shardline.router.handoff.serving_candidates``,
``shardline.router.replica.choose_replica`` and ``shardline.router.forward`` (failover, hop limit).
Only the I/O is simulated: the network (``shardline.sim.network``), etcd (``shardline.sim.etcd``),
model execution (``shardline.sim.executor``, with the real
``shardline.workflows.batching.BatchPolicy``) and the clients.

Layout: ``core`` (clock, heap, seeded generators), ``scenario``/``faults``/``defaults``
(TOML scenarios), ``world`` (the run), ``node``/``control`` (a node process),
``serving``/``routing``/``executor``/``request``/``candidates``/``workload`` (the request
path), ``chaos`` (faults), ``checks`` (safety, liveness), ``metrics``/``result``/``report``
(outputs), ``swarm`` (random schedules), ``cli``. Never imports ``node``; only tests, the
CLI and ``bench/sim_speed.py`` import it.

Imports go one way, with no circle: each module imports only modules named before it here
(``native``, the mypyc build, imports none):

- ``core``, ``defaults``, ``faults``, ``etcd``, ``candidates``; ``scenario``; ``network``,
  ``workload``: the clock, the inputs, the simulated I/O, interned candidate tuples;
- ``request`` (a request and ``Host``, a node as the request path sees it); ``metrics``;
- ``executor`` (here), ``routing`` (where); ``serving`` (the request engine: ingress ->
  router -> executor here or a peer there -> answer);
- ``control`` (etcd client); ``node`` (``SimNode``: a ``Host`` with its process);
- ``chaos``, ``checks``; ``world`` (builds every part and wires them: the parts below
  see it only through the protocols they define); ``result``; ``report``, ``swarm``;
  ``cli``.
"""

if __name__ != "shardline.sim":  # imported by its folder name from a checkout
    raise ImportError(
        "shardline installs under one import name: import shardline.sim, not sim "
        "(e.g. `from shardline.sim import ...`)"
    )

from shardline.membership.native import extend as _extend

_extend(__name__, __path__)  # the compiled cores, when built and fresh (membership/native.py)
