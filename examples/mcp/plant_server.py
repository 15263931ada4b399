#!/usr/bin/env python3
"""A small MCP server (official Python SDK, stdio transport) with plant-floor valve tools.

Agents use it through a capability like `endpoint: "mcp+stdio:python3 plant_server.py"`.
Valve states persist in valves.json in the working directory (the spec's directory).
"""
import json
import os
from typing import Literal

from mcp.server.fastmcp import FastMCP

STATE = "valves.json"
mcp = FastMCP("plant")


def load():
    if os.path.exists(STATE):
        with open(STATE) as f:
            return json.load(f)
    return {"V-1": "closed", "V-2": "open", "V-3": "open"}


@mcp.tool()
def valve_state(valve_id: str) -> str:
    """Report whether a plant valve is open or closed."""
    valves = load()
    if valve_id not in valves:
        raise ValueError(f"unknown valve {valve_id!r}; valves: {', '.join(valves)}")
    return f"{valve_id} is {valves[valve_id]}"


@mcp.tool()
def set_valve(valve_id: str, state: Literal["open", "closed"]) -> str:
    """Open or close a plant valve."""
    valves = load()
    if valve_id not in valves:
        raise ValueError(f"unknown valve {valve_id!r}; valves: {', '.join(valves)}")
    valves[valve_id] = state
    with open(STATE + ".tmp", "w") as f:
        json.dump(valves, f)
    os.replace(STATE + ".tmp", STATE)
    return f"{valve_id} is now {state}"


if __name__ == "__main__":
    mcp.run()
