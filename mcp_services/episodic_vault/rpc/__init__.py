"""EpisodicVault gRPC surface: the servicer, the proto <-> domain codec, input validation and the
PutEpisodes stream."""
