"""The fifth service's section of the configuration (``words``) and its endpoint
(``services.words``), registered with the shared loader when this module is imported."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mcp_services.common.config_schema import Live, StrictModel, register_endpoint, register_section


class WordsConfig(StrictModel):
    # Seconds a tally waits after each chunk of words, so a long one shares the event loop.
    pace_s: Annotated[float, Field(ge=0), Live] = 0.0
    # The longest text an RPC accepts, in characters.
    max_chars: Annotated[int, Field(ge=1)] = 1_000_000


register_endpoint("words")
register_section("words", WordsConfig, service="words")
