"""restkv-engine: GGUF Llama-family inference with native KV-cache eviction.

    from engine import Model
    model = Model("SmolLM2-135M-Instruct.Q4_1.gguf")
    with model.session(n_ctx=2048) as s:
        logits = s.eval(model.tokenize("Hello"))
"""

from ._core import Model, Session, cpu_features, has_cuda
from .errors import EngineError
from .eviction import Eviction, policies

__all__ = ["Model", "Session", "EngineError", "Eviction", "policies", "has_cuda", "cpu_features"]
__version__ = "0.1.0"
