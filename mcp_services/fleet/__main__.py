import sys

from mcp_services.fleet.cli import main

sys.exit(main())
