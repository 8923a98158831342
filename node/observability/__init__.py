"""What a node shows about itself: Prometheus metrics and the /metrics,
/healthz, /readyz endpoint (``metrics``), the sampled prediction log (``predlog``).

May import: ``shardline.node.sdk``, ``shardline.node._proto`` and the cores; never
``serving``, ``cluster`` or ``ops``."""
