"""Routing maps -> expert loads."""
from heteromoe.routing.loads import RoutingLoads, loads_from_topk

__all__ = ["RoutingLoads", "loads_from_topk"]
