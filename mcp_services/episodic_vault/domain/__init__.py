"""EpisodicVault domain: episodes, their tiers (STM, MTM, LTM), the catalog and vector index
that search and recall them, and the storage contract backends keep (backend.py).

No gRPC, no protobuf and no backend specifics (enforced by the import contracts in
pyproject.toml, run by `make lint`): adapters/ implements the storage contract and decides what
depends on the configured backend; rpc/ maps the API onto the store.
"""
