"""The model zoo: growable networks by name (``growbench models`` lists them with their options).

``mlp`` and ``cnn`` for the CPU suites; the papers' networks ``vgg`` (Firefly), ``mobilenetv1``
(the splitting papers), ``resnet18`` (TINY) and ``pointnet`` (signed splitting on ModelNet40).
``registry`` holds ``ZooModel``, ``register_model``, the entry-point group and ``ModelConfig``.
"""

from growbench.nn.zoo.registry import (
    ENTRY_POINT_GROUP,
    ModelConfig,
    ZooModel,
    available_models,
    build_model,
    get_model,
    model_options,
    register_model,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelConfig",
    "ZooModel",
    "available_models",
    "build_model",
    "get_model",
    "model_options",
    "register_model",
]
