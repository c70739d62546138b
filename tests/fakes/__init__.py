"""In-memory fakes of the services' clients, each held to its protocol by a contract test.

They live under tests/ (not in the package): only tests use them, so they never ship and the
domain import contracts need not know them. Each fake keeps the real semantics a caller relies on
(versions and conflicts, idempotent marks, ordering), not canned answers; the contract tests
(tests/<service>/test_*_contract.py) run one scenario against the fake and against the real
client over a real server, so a fake cannot drift from what it stands for.
"""
