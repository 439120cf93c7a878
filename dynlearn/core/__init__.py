"""The model description: symbolic physics, networks, parameters and the compiled vector field."""

from dynlearn.core.model import HybridModel
from dynlearn.core.neural import MLP, Network
from dynlearn.core.parameters import Parameter

__all__ = ["MLP", "HybridModel", "Network", "Parameter"]
