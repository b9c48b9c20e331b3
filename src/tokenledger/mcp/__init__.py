"""The MCP interface: `build_server` maps each tool onto a `Ledger` method; `principal_of` says who calls."""

from tokenledger.mcp.access import principal_of
from tokenledger.mcp.server import build_server

__all__ = ["build_server", "principal_of"]
