"""The MCP gateway: memory.* tools for agents over streamable HTTP and stdio, with API keys and
canary routing. `python -m mcp_services.gateway --help`."""
