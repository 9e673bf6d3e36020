"""ztgate's asyncio runtime: overlay listener, identity, routing, protocol sessions, upstream pools,
audit, metrics and admin HTTP, the agent, simulators, the demo lab and the command line."""

__version__ = "0.1.0"
