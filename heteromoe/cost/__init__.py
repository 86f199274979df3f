"""Cost models shared by the scheduler, the runtime's report and (later) the simulator."""
from heteromoe.cost.ema import EmaPimCost
from heteromoe.cost.gpu import GpuRoofline
from heteromoe.cost.model import CostModel, StepTimes, default_pim_cost
from heteromoe.cost.pim import PimCostModel, PimRooflineV1
from heteromoe.cost.pim_bank import BankPimCost, BankPimTiming

__all__ = [
           "BankPimCost",
           "BankPimTiming",
           "CostModel",
           "EmaPimCost",
           "GpuRoofline",
           "PimCostModel",
           "PimRooflineV1",
           "StepTimes",
           "default_pim_cost",
]
