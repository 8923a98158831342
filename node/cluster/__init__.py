"""The cluster shell around the serving path: etcd registration, watch and gossip
(``membership_shell``), routing to owners and forwarding to peers, placement of models, the
artifact store, the Admin API and catalog operations; ``cluster_node`` wires one node.

May import: ``shardline.node.serving`` and everything it may import; never ``ops``."""
