"""The serving layer both tiers stand on: what a v2 gRPC server needs, written once.

| module | what |
| --- | --- |
| ``batching`` | rows of a request, concatenating requests into one model call, splitting its outputs |
| ``address`` | listen addresses (``HOST:PORT`` or a unix socket): parsing, binding, the socket file |
| ``server`` | the gRPC server factory: options, health, reflection, interceptors, TLS |
| ``lifecycle`` | run until a signal: SIGTERM/SIGINT drain then stop with grace, SIGHUP reloads |
| ``metrics_endpoint`` | the Prometheus ``/metrics`` HTTP endpoint |
| ``validation`` | the one check of a request against a model's signature, on both tiers |
| ``stream`` | the v2 calls: Triton's ``ModelStreamInfer``, ``"[CODE] message"`` errors, unary statuses, the drain, ``waits_alone`` |

It imports the shared floor only (never ``fogline.agent`` or ``fogline.cloud``).
"""
