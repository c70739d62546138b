"""SleepScheduler gRPC surface: the servicer (servicer.py) over its two halves, graph_servicer.py
(graph reads, commits, completion) and jobs_servicer.py (consolidation jobs, config, schedule),
and the proto <-> graph codec (codec.py, also the clients' chunking helpers)."""
