"""Operator tools: the ``shardline`` command (``cli``, ``cli_admin``), the local cluster
(``localcluster``), an etcd launcher, development certificates, package hashing and
checks, the protobuf generator.

May import anything in ``shardline.node`` (it is the top of the house), and ``shardline.sim``
for ``shardline sim``."""
