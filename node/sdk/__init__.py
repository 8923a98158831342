"""The client SDK and what clients share with nodes: ``client`` (``Client``,
``SmartClient``), ``targets`` (node addresses, the standard gRPC service config),
``admin_client``, TLS settings, the wire codec, tensor encoding, and the request errors
with their gRPC statuses (``errors``). Light to import: no torch.

May import: ``shardline.node._proto`` and the pure cores (``shardline.router``,
``shardline.membership``); nothing else of ``shardline.node``."""
