"""Cost models shared by the scheduler, the runtime's report and (later) the simulator."""
from heteromoe.cost.gpu import GpuRoofline
from heteromoe.cost.model import CostModel, StepTimes
from heteromoe.cost.pim import PimCostModel, PimRooflineV1

__all__ = ["CostModel", "StepTimes", "GpuRoofline", "PimCostModel", "PimRooflineV1"]
