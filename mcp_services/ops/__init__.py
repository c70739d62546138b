"""Operators' toolkit: `tori-ops <command>` (also `python -m mcp_services.ops <command>`)."""
