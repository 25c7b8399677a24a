"""Block linear algebra on Functions and the randomized generalized eigensolvers."""

from pdeinv.linalg.multivector import MultiFunction, random_multifunction
from pdeinv.linalg.randomized import EigenResult, double_pass, single_pass

__all__ = ["MultiFunction", "random_multifunction", "EigenResult", "double_pass", "single_pass"]
