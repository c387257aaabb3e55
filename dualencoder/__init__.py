"""dualencoder: CLIP-style dual encoders on TensorFlow 2 and Keras 3.

Example:
```python
import dualencoder
model = dualencoder.load("runs/synthetic-default/model")
scores = model.encode_images(images) @ model.encode_texts(["a red circle"]).T  # NumPy in, NumPy out
```
`build_model` and `load` are imported lazily so that `dualencoder.config` (pure Python) can be
used without starting TensorFlow.
"""

__version__ = "0.1.0"
__all__ = ["build_model", "load"]


def __getattr__(name):
    if name in ("build_model", "load"):
        from dualencoder.model import dual_encoder as model

        return getattr(model, name)
    raise AttributeError(f"module 'dualencoder' has no attribute {name!r}")
