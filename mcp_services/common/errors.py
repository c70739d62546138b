"""Errors domain and codec code may raise without importing gRPC.

:class:`InputError` is the one type that means "the client sent a bad request": validation raises
it (or a subclass) with a message naming the field and the fix, and the RPC layer
(:mod:`mcp_services.common.rpc`) maps it, and only it, to INVALID_ARGUMENT. Any other exception
that reaches a servicer unmapped is the service's fault and becomes INTERNAL.

    ValueError
     +-- InputError              INVALID_ARGUMENT (unless a servicer maps a subclass otherwise)
          +-- codec errors       e.g. the learner's rpc.codec.InvalidInput, scheduler BadRequest
"""

from __future__ import annotations


class InputError(ValueError):
    """A request field is malformed; the message names the field and says the fix.

    A ValueError, so code that validates with ``except ValueError`` (config loading, the vault
    follower skipping a bad episode) keeps catching it; raise it only from validation of what a
    client sent, never for a state of the service.
    """
