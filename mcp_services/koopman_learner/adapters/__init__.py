"""KoopmanLearner adapters: the state files (state_store.py), the vault follower (the vault's
client, follower.py) and the events it publishes on the bus (events.py)."""
