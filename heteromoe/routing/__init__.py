"""Routing maps -> expert loads; synthetic routing; recorded traces."""
from heteromoe.routing.loads import RoutingLoads, loads_from_topk
from heteromoe.routing.synth import BimodalRouting
from heteromoe.routing.traces import RoutingTrace, load_trace

__all__ = ["BimodalRouting", "RoutingLoads", "RoutingTrace", "load_trace", "loads_from_topk"]
