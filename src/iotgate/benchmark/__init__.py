"""`iotgate bench`: load the device listener with wrk over TLS and compare it with nginx.

Modules: `procstat` (CPU seconds and RSS from /proc), `nginx` (the fixed-reply ceiling),
`wrk` (generated Lua scripts, running wrk, parsing its report), `provision` (a server, devices
and tokens), `scenarios` (what each scenario sends), `idle` (idle keep-alive connections and
RSS), `runner` (rounds A B A B and the report). The CLI entry is `iotgate.bench.register`.
"""
