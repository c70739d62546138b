from mcp_services.ops.cli import main

raise SystemExit(main())
