"""The serving path of one node: gRPC services (``service``; the Open Inference Protocol's:
``oip``, ``oip_rest``, its tensors ``oip_tensors``), start/stop and health
(``server``), the ingress (head, admission, rules), the executor (loaded models, their actors,
inputs and answers), the actor runtime and mailboxes, input decoding, admission and
shedding, request errors.

May import: ``shardline.node.observability``, ``shardline.node.sdk``,
``shardline.node._proto``, ``shardline.node._proto_oip`` and the cores (``shardline.router``,
``shardline.membership``, ``shardline.workflows``); never ``cluster`` or ``ops``."""
