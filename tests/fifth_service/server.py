"""The fifth service: `python -m tests.fifth_service.server`, run by the runner every service uses.

Only wiring: the settings in force (``words.pace_s`` follows config reloads), the tally registry
and the servicer. Health, reflection, metrics, auth, the task group and the reload come from
common/server.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import grpc

from mcp_services.common.config_schema import Settings, live_keys, section_of
from mcp_services.common.jobs import JobRegistry
from mcp_services.common.reload import Change
from mcp_services.common.server import Context, run
from tests.fifth_service.domain import Tally
from tests.fifth_service.rpc import SERVICE, WordsServicer, add_to_server
from tests.fifth_service.settings import WordsConfig


class WordsService:
    service_names = (SERVICE,)

    def __init__(self, ctx: Context) -> None:
        self.config = section_of(ctx.settings, WordsConfig)
        self.jobs: JobRegistry[Tally] = JobRegistry("tally")

    def register(self, server: grpc.aio.Server) -> None:
        add_to_server(WordsServicer(lambda: self.config, self.jobs), server)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.jobs.close()

    def live_settings(self) -> dict[str, Callable[[], object]]:
        return {
            key: self._reader(key.rpartition(".")[2]) for key in live_keys(WordsConfig, "words")
        }

    def _reader(self, name: str) -> Callable[[], object]:
        return lambda: getattr(self.config, name)

    async def apply_settings(self, settings: Settings, changes: Sequence[Change]) -> None:
        self.config = section_of(settings, WordsConfig)


def main() -> None:
    sys.exit(run("words", "words", WordsService))


if __name__ == "__main__":
    main()
