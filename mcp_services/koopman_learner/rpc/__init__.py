"""KoopmanLearner gRPC surface: the servicer, the proto <-> domain codec, and series.py (how a
client sends one series as a named stream)."""
