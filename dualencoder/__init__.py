"""dualencoder: CLIP-style dual encoders on TensorFlow 2 and Keras 3.

Example:
```python
import dualencoder
model = dualencoder.load("runs/synthetic-default/model")
scores = model.encode_images(images) @ model.encode_texts(["a red circle"]).T  # NumPy in, NumPy out
```
`build_model`, `load` and `save_model` are imported lazily so that `dualencoder.config` (pure
Python) can be used without starting TensorFlow.
"""

__version__ = "0.1.0"
__all__ = ["build_model", "load", "save_model"]


def __getattr__(name):
    if name == "build_model":
        from dualencoder.model.dual_encoder import build_model

        return build_model
    if name in ("load", "save_model"):
        from dualencoder.model import saving

        return getattr(saving, name)
    raise AttributeError(f"module 'dualencoder' has no attribute {name!r}")
