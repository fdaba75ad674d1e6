"""Imports every built-in model module so their ``@register_model`` decorators run."""

from growbench.nn.zoo import mobilenet, pointnet, resnet, small, vgg  # noqa: F401
